//! `sluice bench`: a load generator over the Rust client.
//!
//! Writes `maps` map outputs of `bytes_per_map` bytes of self-checking records (see
//! [`crate::records`]) spread uniformly over `partitions`, then reads every partition back. With
//! `verify`, every record's payload is checked and each record id is tracked in a bitset, so
//! `lost` and `duplicated` are exact. The same run measures this machine's loopback TCP
//! throughput so the figures can be read against the machine's own limit, and what LZ4 alone
//! does on as many threads as the benchmark's runtime has, on batches of the same records.
//!
//! A plain run without `master` starts its cluster as child processes (`sluice master` and
//! `sluice worker`, this same binary), so `/proc` tells the workers' CPU time and memory apart
//! from the client's (this process): CPU seconds per GB of each phase, and the workers' RSS
//! before the run, at their peak, right after the shuffle is deleted and after a settle time.
//! Runs with TLS, auth or an overhead comparison use an in-process cluster, and report no CPU
//! or memory figures. Against `master`, the client's CPU is reported, and the workers' figures
//! when their pids are given.
//!
//! The benchmark's client counts into a metrics registry of its own: the report carries its
//! totals (`client_metrics`), and `admin_listen` serves them on `/metrics` while the run lasts.
//! `metrics_overhead` measures what the servers' metrics cost: the same workload on an embedded
//! cluster with `metrics = true` and with `metrics = false`, alternating, round after round.
//! `security_overhead` does the same over the security configurations of
//! [`SECURITY_CONFIGS`] (plain, TLS on every port), configurations taking turns in each round.

use std::io::{BufRead, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sluice_client::{ClientConfig, ClientMetrics, ClientMetricsSnapshot, SluiceClient};
use sluice_ops::Telemetry;
use sluice_protocol::batch;
use sluice_protocol::ShuffleKey;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::local::{LocalCluster, LocalOptions};
use crate::records;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// An existing cluster's masters (`host:port[,host:port...]`); `None` starts an embedded
    /// cluster.
    pub master: Option<String>,
    /// Workers of the embedded cluster.
    pub workers: usize,
    pub maps: u32,
    pub partitions: u32,
    pub bytes_per_map: u64,
    pub record_size: usize,
    pub verify: bool,
    /// Maps written (and partition ranges read) at once.
    pub concurrency: usize,
    /// Bytes pushed through loopback TCP to measure the machine's limit (0: skip).
    pub loopback_bytes: u64,
    /// Copies of every batch (0: the cluster's default). With 2, the same workload also runs
    /// with replication 1 first, and the report carries both.
    pub replication: u32,
    /// Serve the benchmark client's metrics on `http://ADDR/metrics` while it runs.
    pub admin_listen: Option<String>,
    /// Rounds of the metrics-overhead comparison (embedded cluster only): each round runs the
    /// workload once with the servers' metrics on and once off. `None`: a plain run.
    pub metrics_overhead: Option<u32>,
    /// TLS on every port of the embedded cluster, and the client dialing with it.
    pub tls: bool,
    /// A cluster secret on the embedded cluster, and the client authenticating as its
    /// application.
    pub auth: bool,
    /// Rounds of the security-overhead comparison (embedded cluster only): each round runs the
    /// workload once per configuration of [`SECURITY_CONFIGS`]. `None`: no comparison.
    pub security_overhead: Option<u32>,
    /// How the client compresses batches.
    pub compression: Codec,
    /// Raw bytes LZ4 alone compresses (and decompresses) to measure what it can do (0: skip).
    pub lz4_bytes: u64,
    /// How long to wait after the shuffle is deleted before the workers' settled RSS is read.
    pub settle: Duration,
    /// Where the embedded cluster's data directories are made (a temporary directory inside
    /// it); `None`: the system's temporary directory.
    pub data_dir: Option<PathBuf>,
    /// With `master`: the pids of the cluster's workers on this machine, whose CPU time and
    /// memory the report then carries.
    pub worker_pids: Vec<u32>,
    /// Rounds of the degraded comparison (embedded cluster only): each round runs the workload
    /// once per condition of [`CONDITIONS`] (clean, a slow disk, a slow link). `None`: no
    /// comparison.
    pub degraded: Option<u32>,
    /// What is wrong with the embedded cluster of a run (set by the degraded comparison for
    /// each of its runs).
    pub condition: Condition,
}

/// A condition of the embedded cluster the degraded comparison runs the workload under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// Nothing wrong.
    #[default]
    Clean,
    /// Every disk write of every worker held 100 ms (`fault_write_delay = "100ms"`).
    SlowDisk,
    /// Every worker's push and fetch ports behind a proxy adding 20 ms + 0-10 ms of jitter each
    /// way (seeded): writers, replica forwards and readers all cross it.
    SlowLink,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::Clean => "clean",
            Condition::SlowDisk => "slow-disk (100 ms writes)",
            Condition::SlowLink => "slow-link (20 ms + 0-10 ms jitter)",
        }
    }
}

/// What `--degraded` compares, the first being the baseline of the slowdowns.
pub const CONDITIONS: &[Condition] = &[Condition::Clean, Condition::SlowDisk, Condition::SlowLink];

/// The batch codec of the benchmark's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    #[default]
    Lz4,
    Zstd,
}

impl Codec {
    pub fn name(self) -> &'static str {
        self.batch_codec().name()
    }

    /// The client's setting.
    pub fn batch_codec(self) -> batch::Codec {
        match self {
            Codec::None => batch::Codec::None,
            Codec::Lz4 => batch::Codec::Lz4,
            Codec::Zstd => batch::Codec::Zstd,
        }
    }
}

/// A security configuration of the embedded cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    /// Its name in reports.
    pub name: &'static str,
    /// TLS on every port and every dial.
    pub tls: bool,
    /// A cluster secret, and application auth for the client.
    pub auth: bool,
}

impl Security {
    pub const PLAIN: Security = Security {
        name: "plain",
        tls: false,
        auth: false,
    };
    pub const TLS: Security = Security {
        name: "tls",
        tls: true,
        auth: false,
    };
    pub const AUTH: Security = Security {
        name: "auth",
        tls: false,
        auth: true,
    };
    pub const AUTH_TLS: Security = Security {
        name: "auth+tls",
        tls: true,
        auth: true,
    };
}

/// What `--security-overhead` compares, the first being the baseline of the ratios.
pub const SECURITY_CONFIGS: &[Security] = &[
    Security::PLAIN,
    Security::AUTH,
    Security::TLS,
    Security::AUTH_TLS,
];

/// How long the workers may take to delete the benchmark's shuffle once it is unregistered.
const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

/// The application secret of the benchmark's client when its cluster runs with auth.
const BENCH_APP_SECRET: &[u8] = b"the benchmark application's own secret";

#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchReport {
    pub workers: usize,
    pub maps: u32,
    pub partitions: u32,
    pub record_size: usize,
    pub write_bytes: u64,
    pub write_secs: f64,
    /// Gigabytes (1e9 bytes) of raw records per second.
    pub write_gbps: f64,
    pub read_bytes: u64,
    pub read_secs: f64,
    pub read_gbps: f64,
    pub records_written: u64,
    pub records_read: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub verified: bool,
    /// This machine's loopback TCP throughput in GB/s, measured in the same run.
    pub loopback_gbps: f64,
    /// The client's batch codec: `none`, `lz4` or `zstd`.
    pub compression: String,
    /// What LZ4 alone does on this machine in the same run (`lz4_bytes` 0: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lz4: Option<CodecFigures>,
    /// What zstd alone does, on as many bytes, when the client uses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd: Option<CodecFigures>,
    /// `write_gbps` over what LZ4 alone compresses per second on as many threads: how close the
    /// write path comes to its codec's limit (with LZ4 the client's codec, and measured).
    pub write_of_lz4: Option<f64>,
    /// The same for zstd, when it is the client's codec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_of_zstd: Option<f64>,
    /// Push requests acked in the run, and their round trips as the client saw them (send to
    /// ack), in milliseconds: the upper bound of the histogram bucket holding the percentile.
    pub pushes: u64,
    pub push_p50_ms: Option<f64>,
    pub push_p99_ms: Option<f64>,
    /// CPU seconds (user + system) per GB of raw records: the client process's, and the
    /// workers' (summed over them), for the write phase, the read phase, and both over the
    /// bytes written. `None` where they cannot be told apart (an in-process cluster, or
    /// workers of an external cluster whose pids were not given).
    pub client_cpu_write_secs_per_gb: Option<f64>,
    pub client_cpu_read_secs_per_gb: Option<f64>,
    pub client_cpu_secs_per_gb: Option<f64>,
    pub worker_cpu_write_secs_per_gb: Option<f64>,
    pub worker_cpu_read_secs_per_gb: Option<f64>,
    pub worker_cpu_secs_per_gb: Option<f64>,
    /// The workers' resident memory in bytes (the largest worker's): before the run, its peak
    /// (VmHWM, since the worker started), right after the shuffle was deleted (the workers'
    /// files gone), and `settle_secs` later.
    pub worker_rss_idle_bytes: Option<u64>,
    pub worker_rss_peak_bytes: Option<u64>,
    pub worker_rss_after_delete_bytes: Option<u64>,
    pub worker_rss_settled_bytes: Option<u64>,
    pub settle_secs: f64,
    /// Replication asked for (0: the cluster's default).
    pub replication: u32,
    /// With `--replication 2`: the same workload with replication 1, run first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_1: Option<Baseline>,
    /// The client's totals over every run of the benchmark.
    pub client_metrics: ClientFigures,
    /// With `metrics_overhead`: throughput with the servers' metrics on and off. The report's
    /// other figures are then those of the last run with metrics on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_overhead: Option<MetricsOverhead>,
    /// With `security_overhead`: throughput under each security configuration. The report's
    /// other figures are then those of the last run of the first configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_overhead: Option<SecurityOverhead>,
    /// With `degraded`: the workload's time under each condition and its slowdown against the
    /// clean run. The report's other figures are then those of the last clean run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Degraded>,
    /// Whether the run had TLS on every port (`--tls`).
    pub tls: bool,
    /// Whether the run had a cluster secret and an authenticated client (`--auth`).
    pub auth: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a codec alone does on this machine: raw GB/s over all threads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CodecFigures {
    pub threads: usize,
    pub compress_gbps: f64,
    pub decompress_gbps: f64,
    /// Compressed bytes over raw bytes of the records measured.
    pub ratio: f64,
}

/// What security costs: per configuration, medians over the rounds and each round's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecurityOverhead {
    pub rounds: u32,
    /// In the order of [`SECURITY_CONFIGS`]; ratios are over the first configuration.
    pub configs: Vec<SecurityFigures>,
    /// Summed over every run of the comparison.
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

/// One security configuration's throughput.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecurityFigures {
    pub name: String,
    /// Medians over the rounds.
    pub write_gbps: f64,
    pub read_gbps: f64,
    /// Median over the first configuration's median: 1.0 costs nothing, 0.8 costs 20%.
    pub write_ratio: f64,
    pub read_ratio: f64,
    /// Each round's figures, in round order.
    pub write_runs: Vec<f64>,
    pub read_runs: Vec<f64>,
}

/// What a slow disk or a slow link costs: per condition, medians over the rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Degraded {
    pub rounds: u32,
    /// In the order of [`CONDITIONS`]; slowdowns are over the first (clean).
    pub conditions: Vec<ConditionFigures>,
    /// Summed over every run of the comparison.
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

/// The workload under one condition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConditionFigures {
    pub condition: Condition,
    /// Medians over the rounds: seconds to write and read everything, and throughputs.
    pub secs: f64,
    pub write_gbps: f64,
    pub read_gbps: f64,
    /// Median seconds over the clean run's median: 1.0 costs nothing, 2.0 takes twice as long.
    pub slowdown: f64,
    /// Each round's seconds, in round order.
    pub secs_runs: Vec<f64>,
    /// The client's counters summed over the condition's runs.
    pub revives: u64,
    pub timeouts: u64,
    pub hedges: u64,
}

/// The client's totals (see [`ClientMetricsSnapshot`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientFigures {
    pub push_bytes: u64,
    pub push_retries: u64,
    pub revives: u64,
    pub fetch_retries: u64,
    pub data_lost: u64,
    pub timeouts: u64,
    pub hedges: u64,
}

impl From<ClientMetricsSnapshot> for ClientFigures {
    fn from(s: ClientMetricsSnapshot) -> ClientFigures {
        ClientFigures {
            push_bytes: s.push_bytes,
            push_retries: s.push_retries,
            revives: s.revives,
            fetch_retries: s.fetch_retries,
            data_lost: s.data_lost,
            timeouts: s.timeouts,
            hedges: s.hedges,
        }
    }
}

/// What the servers' metrics cost: medians over the rounds, and each round's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsOverhead {
    pub rounds: u32,
    pub metrics_on_write_gbps: f64,
    pub metrics_off_write_gbps: f64,
    pub metrics_on_read_gbps: f64,
    pub metrics_off_read_gbps: f64,
    /// Median with metrics on over median with them off: 1.0 costs nothing, 0.95 costs 5%.
    pub write_ratio: f64,
    pub read_ratio: f64,
    /// Each round's figures, in round order.
    pub on_write_gbps: Vec<f64>,
    pub off_write_gbps: Vec<f64>,
    pub on_read_gbps: Vec<f64>,
    pub off_read_gbps: Vec<f64>,
    /// Summed over every run of the comparison.
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

/// The figures of a comparison run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Baseline {
    pub write_gbps: f64,
    pub read_gbps: f64,
    pub lost: u64,
    pub duplicated: u64,
}

impl BenchReport {
    pub fn passed(&self) -> bool {
        let baseline_clean = self
            .replication_1
            .as_ref()
            .is_none_or(|b| b.lost == 0 && b.duplicated == 0);
        let overhead_clean = self
            .metrics_overhead
            .as_ref()
            .is_none_or(|o| o.lost == 0 && o.duplicated == 0 && o.corrupted == 0);
        let security_clean = self
            .security_overhead
            .as_ref()
            .is_none_or(|o| o.lost == 0 && o.duplicated == 0 && o.corrupted == 0);
        let degraded_clean = self
            .degraded
            .as_ref()
            .is_none_or(|o| o.lost == 0 && o.duplicated == 0 && o.corrupted == 0);
        self.error.is_none()
            && self.lost == 0
            && self.duplicated == 0
            && self.corrupted == 0
            && baseline_clean
            && overhead_clean
            && security_clean
            && degraded_clean
    }
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

/// Pushes `bytes` through a loopback TCP connection between two threads; returns GB/s.
pub fn measure_loopback(bytes: u64) -> anyhow::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    let buf = vec![0x5Au8; 1 << 20];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    drop(stream);
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("loopback reader panicked"))??;
    Ok(gbps(received, started.elapsed().as_secs_f64()))
}

/// Compresses, then decompresses, `bytes` of benchmark records cut into batches of
/// `batch_size` with `codec` (through the functions the client's batches use) on `threads`
/// threads at once; returns raw GB/s over all threads for each.
pub fn measure_codec(
    codec: batch::Codec,
    bytes: u64,
    threads: usize,
    record_size: usize,
    batch_size: usize,
) -> anyhow::Result<CodecFigures> {
    anyhow::ensure!(codec != batch::Codec::None, "no codec to measure");
    /// Distinct batches each thread cycles through, so the input is not one cache-hot buffer.
    const BATCHES: usize = 16;
    let threads = threads.max(1);
    let rounds = (bytes / threads as u64)
        .div_ceil((BATCHES * batch_size) as u64)
        .max(1);
    let batches: Vec<Vec<Vec<u8>>> = (0..threads)
        .map(|thread| {
            let mut seq = 0u32;
            (0..BATCHES)
                .map(|_| {
                    let mut block = Vec::with_capacity(batch_size + record_size);
                    while block.len() + record_size <= batch_size.max(record_size) {
                        records::encode(&mut block, thread as u32, seq, record_size);
                        seq += 1;
                    }
                    block
                })
                .collect()
        })
        .collect();
    let raw: u64 = batches
        .iter()
        .flatten()
        .map(|b| b.len() as u64)
        .sum::<u64>()
        * rounds;
    let barrier = std::sync::Barrier::new(threads + 1);
    let (compress_secs, compressed) = std::thread::scope(|scope| {
        let workers: Vec<_> = batches
            .iter()
            .map(|mine| {
                let barrier = &barrier;
                scope.spawn(move || -> anyhow::Result<Vec<Vec<u8>>> {
                    let mut out: Vec<Vec<u8>> = mine
                        .iter()
                        .map(|b| Vec::with_capacity(2 * b.len()))
                        .collect();
                    barrier.wait();
                    for _ in 0..rounds {
                        for (i, block) in mine.iter().enumerate() {
                            out[i].clear();
                            let shrunk = batch::compress_into(codec, block, &mut out[i]);
                            anyhow::ensure!(shrunk, "{codec} did not shrink the records");
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let compressed = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("{codec} thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::Ok((started.elapsed().as_secs_f64(), compressed))
    })?;
    let decompress_secs = std::thread::scope(|scope| -> anyhow::Result<f64> {
        let workers: Vec<_> = compressed
            .iter()
            .zip(&batches)
            .map(|(mine, raw)| {
                let barrier = &barrier;
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut out: Vec<Vec<u8>> = raw.iter().map(|b| vec![0; b.len()]).collect();
                    barrier.wait();
                    for _ in 0..rounds {
                        for (i, block) in mine.iter().enumerate() {
                            let n = batch::decompress_into(codec, block, &mut out[i])
                                .map_err(|e| anyhow::anyhow!("{codec}: {e}"))?;
                            anyhow::ensure!(n == raw[i].len(), "{codec} round trip lost bytes");
                        }
                    }
                    anyhow::ensure!(out == *raw, "{codec} round trip changed bytes");
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("{codec} thread panicked"))??;
        }
        Ok(started.elapsed().as_secs_f64())
    })?;
    let packed: u64 = compressed.iter().flatten().map(|b| b.len() as u64).sum();
    let unpacked: u64 = batches.iter().flatten().map(|b| b.len() as u64).sum();
    Ok(CodecFigures {
        threads,
        compress_gbps: gbps(raw, compress_secs),
        decompress_gbps: gbps(raw, decompress_secs),
        ratio: packed as f64 / unpacked.max(1) as f64,
    })
}

/// A process whose `/proc` entry the benchmark reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proc {
    /// This process: the client.
    Me,
    Pid(u32),
}

impl Proc {
    fn path(self, file: &str) -> PathBuf {
        match self {
            Proc::Me => Path::new("/proc/self").join(file),
            Proc::Pid(pid) => Path::new("/proc").join(pid.to_string()).join(file),
        }
    }

    /// CPU seconds (user + system) the process has used so far; `None` when `/proc` cannot
    /// tell (not Linux, or the process is gone).
    fn cpu_secs(self) -> Option<f64> {
        let stat = std::fs::read_to_string(self.path("stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces; utime and stime
        // are fields 14 and 15, the 12th and 13th after it.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
    }

    /// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
    fn status_bytes(self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(self.path("status")).ok()?;
        status.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib * 1024)
        })
    }
}

/// The processes a run's CPU and memory figures come from.
#[derive(Debug, Clone, Default)]
struct Probe {
    /// Whether this process is the client alone (the cluster is not in it).
    client: bool,
    workers: Vec<u32>,
    /// The workers' data directories, to see a deleted shuffle's files go.
    worker_dirs: Vec<PathBuf>,
    settle: Duration,
}

/// CPU seconds so far of the client and of the workers (summed).
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    client: Option<f64>,
    workers: Option<f64>,
}

impl Probe {
    fn cpu(&self) -> CpuSample {
        CpuSample {
            client: if self.client {
                Proc::Me.cpu_secs()
            } else {
                None
            },
            workers: if self.workers.is_empty() {
                None
            } else {
                self.workers
                    .iter()
                    .map(|&pid| Proc::Pid(pid).cpu_secs())
                    .sum()
            },
        }
    }

    /// The largest worker's `VmRSS` or `VmHWM`.
    fn worker_bytes(&self, key: &str) -> Option<u64> {
        self.workers
            .iter()
            .map(|&pid| Proc::Pid(pid).status_bytes(key))
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .max()
    }

    /// Waits (up to `limit`) until no worker directory holds files of `key`.
    async fn deleted(&self, key: &ShuffleKey, limit: Duration) -> bool {
        let dirs: Vec<PathBuf> = self
            .worker_dirs
            .iter()
            .map(|d| d.join(&*key.app_id).join(key.shuffle_id.to_string()))
            .collect();
        let started = Instant::now();
        while dirs.iter().any(|d| d.exists()) {
            if started.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// CPU seconds per GB between two samples.
fn secs_per_gb(before: Option<f64>, after: Option<f64>, bytes: u64) -> Option<f64> {
    let (before, after) = (before?, after?);
    (bytes > 0).then(|| (after - before).max(0.0) / (bytes as f64 / 1e9))
}

/// A child `sluice` process: its stderr goes to a log file, its stdout after the ready line is
/// drained; SIGTERM, then SIGKILL after a grace, when dropped.
#[derive(Debug)]
struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

/// How long a child may take to print its ready line.
const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child has to stop on SIGTERM before it is killed.
const CHILD_STOP_GRACE: Duration = Duration::from_secs(5);

impl ChildProcess {
    /// Starts `sluice <role> --config <config>` and returns it with its ready line.
    fn start(
        exe: &Path,
        dir: &Path,
        name: &str,
        role: &str,
        config: &str,
    ) -> anyhow::Result<(ChildProcess, serde_json::Value)> {
        let config_file = dir.join(format!("{name}.toml"));
        std::fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        let log = dir.join(format!("{name}.log"));
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = std::process::Command::new(exe)
            .arg(role)
            .arg("--config")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name} ({})", exe.display()))?;
        let (lines, ready) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            // Hands over the ready line, then drains stdout so the child never writes to a
            // closed pipe.
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = lines.send(line);
                }
            });
        }
        let mut process = ChildProcess {
            name: name.to_string(),
            child,
            log,
        };
        let line = match ready.recv_timeout(CHILD_READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                process.stop();
                anyhow::bail!("{name} printed no ready line\n{}", process.log_tail());
            }
        };
        let ready =
            serde_json::from_str(&line).with_context(|| format!("{name}'s ready line {line:?}"))?;
        Ok((process, ready))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its log, for errors.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, a grace to exit, then SIGKILL; reaps it.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill only sends a signal, to a child of ours not yet reaped (so its pid
            // cannot have been reused).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let started = Instant::now();
        while started.elapsed() < CHILD_STOP_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} ignored SIGTERM, killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A master and workers run as child processes of this binary, each with its files under
/// `dir`: what a plain benchmark run measures, so the workers' CPU time and memory are their
/// own.
#[derive(Debug)]
struct ChildCluster {
    master_addr: String,
    /// Stopped in reverse order: workers first.
    processes: Vec<ChildProcess>,
    worker_pids: Vec<u32>,
    worker_dirs: Vec<PathBuf>,
}

impl ChildCluster {
    /// Starts the master, then each worker, each once the previous is ready (a worker prints
    /// its ready line once the master accepted it). Blocking.
    fn start(dir: &Path, workers: usize, metrics: bool) -> anyhow::Result<ChildCluster> {
        let exe = std::env::current_exe().context("finding the sluice binary")?;
        let template = LocalOptions::new(workers, dir);
        let master = sluice_master::MasterConfig {
            listen: "127.0.0.1:0".into(),
            admin_listen: String::new(),
            data_dir: dir.join("master"),
            id: Some(0),
            metrics,
            ..template.master.clone()
        };
        let (process, ready) =
            ChildProcess::start(&exe, dir, "master", "master", &toml::to_string(&master)?)?;
        let master_addr = ready["master"]
            .as_str()
            .with_context(|| format!("no master address in {ready}"))?
            .to_string();
        let mut cluster = ChildCluster {
            master_addr,
            processes: vec![process],
            worker_pids: Vec::new(),
            worker_dirs: Vec::new(),
        };
        for i in 0..workers {
            let data_dir = dir.join(format!("worker-{i}"));
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let worker = sluice_worker::WorkerConfig {
                id: format!("worker-{i}"),
                master: cluster.master_addr.clone(),
                host: "127.0.0.1".into(),
                push_listen: "127.0.0.1:0".into(),
                fetch_listen: "127.0.0.1:0".into(),
                admin_listen: String::new(),
                data_dirs: vec![data_dir.clone()],
                metrics,
                ..template.worker.clone()
            };
            let name = format!("worker-{i}");
            let (process, _) =
                ChildProcess::start(&exe, dir, &name, "worker", &toml::to_string(&worker)?)?;
            cluster.worker_pids.push(process.pid());
            cluster.worker_dirs.push(data_dir);
            cluster.processes.push(process);
        }
        Ok(cluster)
    }
}

impl Drop for ChildCluster {
    fn drop(&mut self) {
        while let Some(mut process) = self.processes.pop() {
            process.stop();
        }
    }
}

/// One bit per record id, shared by the readers.
struct Seen {
    bits: Vec<Vec<AtomicU64>>,
}

impl Seen {
    fn new(maps: u32, records_per_map: u64) -> Seen {
        let words = records_per_map.div_ceil(64) as usize;
        Seen {
            bits: (0..maps)
                .map(|_| (0..words).map(|_| AtomicU64::new(0)).collect())
                .collect(),
        }
    }

    /// Marks a record; `None` when the id is outside what was written, else whether it was new.
    fn mark(&self, id: records::RecordId) -> Option<bool> {
        let word = self.bits.get(id.map as usize)?.get(id.seq as usize / 64)?;
        let bit = 1u64 << (id.seq % 64);
        Some(word.fetch_or(bit, Ordering::Relaxed) & bit == 0)
    }

    fn count(&self) -> u64 {
        self.bits
            .iter()
            .flatten()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

#[derive(Default)]
struct ReadTotals {
    bytes: u64,
    records: u64,
    duplicated: u64,
    corrupted: u64,
}

pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        options.maps > 0 && options.partitions > 0,
        "--maps and --partitions must be at least 1"
    );
    anyhow::ensure!(
        options.record_size >= records::RECORD_HEAD,
        "--record-size must be at least {} bytes",
        records::RECORD_HEAD
    );
    anyhow::ensure!(
        options.metrics_overhead.is_none() || options.master.is_none(),
        "--metrics-overhead runs its own embedded clusters: drop --master"
    );
    anyhow::ensure!(
        options.security_overhead.is_none() || options.master.is_none(),
        "--security-overhead runs its own embedded clusters: drop --master"
    );
    anyhow::ensure!(
        !(options.tls || options.auth) || options.master.is_none(),
        "--tls and --auth set up the embedded cluster: drop --master"
    );
    anyhow::ensure!(
        options.degraded.is_none() || options.master.is_none(),
        "--degraded runs its own embedded clusters: drop --master"
    );
    let comparisons = [
        options.metrics_overhead.is_some(),
        options.security_overhead.is_some(),
        options.degraded.is_some(),
    ];
    anyhow::ensure!(
        comparisons.iter().filter(|c| **c).count() <= 1,
        "--security-overhead, --metrics-overhead and --degraded: one comparison at a time"
    );
    let loopback_gbps = if options.loopback_bytes > 0 {
        let bytes = options.loopback_bytes;
        tokio::task::spawn_blocking(move || measure_loopback(bytes)).await??
    } else {
        0.0
    };
    eprintln!("loopback tcp: {loopback_gbps:.2} GB/s");
    let alone = |codec: batch::Codec| async move {
        let (bytes, record_size) = (options.lz4_bytes, options.record_size);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let batch_size = ClientConfig::new("").batch_size;
        let figures = tokio::task::spawn_blocking(move || {
            measure_codec(codec, bytes, threads, record_size, batch_size)
        })
        .await??;
        eprintln!(
            "{codec} alone on {} threads: compress {:.2} GB/s, decompress {:.2} GB/s, ratio {:.3}",
            figures.threads, figures.compress_gbps, figures.decompress_gbps, figures.ratio
        );
        anyhow::Ok(figures)
    };
    let measured = options.lz4_bytes > 0;
    let lz4 = if measured {
        Some(alone(batch::Codec::Lz4).await?)
    } else {
        None
    };
    let zstd = if measured && options.compression == Codec::Zstd {
        Some(alone(batch::Codec::Zstd).await?)
    } else {
        None
    };
    let telemetry = Telemetry::new(true, &[]);
    let metrics = telemetry.register(ClientMetrics::new);
    let admin = CancellationToken::new();
    let _stop_admin = admin.clone().drop_guard();
    if let Some(addr) = &options.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin port {addr}"))?;
        eprintln!(
            "client metrics on http://{}/metrics",
            listener.local_addr()?
        );
        let router = sluice_ops::admin::router(
            telemetry.clone(),
            Arc::new(|| Ok(())),
            serde_json::json!({}),
        );
        sluice_ops::admin::spawn(listener, router, admin.clone());
    }
    let security = match (options.tls, options.auth) {
        (true, true) => Security::AUTH_TLS,
        (true, false) => Security::TLS,
        (false, true) => Security::AUTH,
        (false, false) => Security::PLAIN,
    };
    let mut report = match (
        options.metrics_overhead,
        options.security_overhead,
        options.degraded,
    ) {
        (Some(rounds), _, _) => compare_metrics(options, &metrics, security, rounds.max(1)).await?,
        (None, Some(rounds), _) => compare_security(options, &metrics, rounds.max(1)).await?,
        (None, None, Some(rounds)) => {
            compare_degraded(options, &metrics, security, rounds.max(1)).await?
        }
        (None, None, None) => run_cluster(options, &metrics, true, security, true).await?,
    };
    report.loopback_gbps = loopback_gbps;
    report.client_metrics = metrics.snapshot().into();
    report.compression = options.compression.name().to_string();
    report.write_of_lz4 = match (&lz4, options.compression) {
        (Some(lz4), Codec::Lz4) => Some(ratio(report.write_gbps, lz4.compress_gbps)),
        _ => None,
    };
    report.write_of_zstd = zstd
        .as_ref()
        .map(|zstd| ratio(report.write_gbps, zstd.compress_gbps));
    report.lz4 = lz4;
    report.zstd = zstd;
    report.settle_secs = options.settle.as_secs_f64();
    summarize(&report);
    Ok(report)
}

/// The report's CPU, latency and memory figures on stderr.
fn summarize(report: &BenchReport) {
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let mib =
        |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1}", v as f64 / 1048576.0));
    if let Some(of) = report.write_of_lz4 {
        eprintln!("write is {:.1}% of what lz4 alone compresses", of * 100.0);
    }
    if let Some(of) = report.write_of_zstd {
        eprintln!("write is {:.1}% of what zstd alone compresses", of * 100.0);
    }
    eprintln!(
        "pushes: {}, p50 {} ms, p99 {} ms",
        report.pushes,
        secs(report.push_p50_ms),
        secs(report.push_p99_ms)
    );
    eprintln!(
        "cpu s/GB: client write {} read {} total {}; workers write {} read {} total {}",
        secs(report.client_cpu_write_secs_per_gb),
        secs(report.client_cpu_read_secs_per_gb),
        secs(report.client_cpu_secs_per_gb),
        secs(report.worker_cpu_write_secs_per_gb),
        secs(report.worker_cpu_read_secs_per_gb),
        secs(report.worker_cpu_secs_per_gb),
    );
    eprintln!(
        "worker rss MiB: idle {}, peak {}, after delete {}, after {:.0}s {}",
        mib(report.worker_rss_idle_bytes),
        mib(report.worker_rss_peak_bytes),
        mib(report.worker_rss_after_delete_bytes),
        report.settle_secs,
        mib(report.worker_rss_settled_bytes),
    );
}

/// Runs the workload `rounds` times with the servers' metrics on and as often with them off,
/// alternating which goes first, each on a fresh embedded cluster.
async fn compare_metrics(
    options: &BenchOptions,
    metrics: &ClientMetrics,
    security: Security,
    rounds: u32,
) -> anyhow::Result<BenchReport> {
    let mut overhead = MetricsOverhead {
        rounds,
        ..MetricsOverhead::default()
    };
    let mut last_on = None;
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            eprintln!(
                "round {}/{rounds}: metrics {}",
                round + 1,
                if on { "on" } else { "off" }
            );
            let report = run_cluster(options, metrics, on, security, false).await?;
            overhead.lost += report.lost;
            overhead.duplicated += report.duplicated;
            overhead.corrupted += report.corrupted;
            if on {
                overhead.on_write_gbps.push(report.write_gbps);
                overhead.on_read_gbps.push(report.read_gbps);
            } else {
                overhead.off_write_gbps.push(report.write_gbps);
                overhead.off_read_gbps.push(report.read_gbps);
            }
            if let Some(error) = &report.error {
                anyhow::bail!("metrics {}: {error}", if on { "on" } else { "off" });
            }
            if on {
                last_on = Some(report);
            }
        }
    }
    overhead.metrics_on_write_gbps = median(&overhead.on_write_gbps);
    overhead.metrics_off_write_gbps = median(&overhead.off_write_gbps);
    overhead.metrics_on_read_gbps = median(&overhead.on_read_gbps);
    overhead.metrics_off_read_gbps = median(&overhead.off_read_gbps);
    overhead.write_ratio = ratio(
        overhead.metrics_on_write_gbps,
        overhead.metrics_off_write_gbps,
    );
    overhead.read_ratio = ratio(
        overhead.metrics_on_read_gbps,
        overhead.metrics_off_read_gbps,
    );
    eprintln!(
        "metrics on/off: write {:.3}, read {:.3}",
        overhead.write_ratio, overhead.read_ratio
    );
    let mut report = last_on.context("no round ran")?;
    report.metrics_overhead = Some(overhead);
    Ok(report)
}

/// Runs the workload `rounds` times under each configuration of [`SECURITY_CONFIGS`], each on a
/// fresh embedded cluster, the configurations taking turns (the order rotating every round).
async fn compare_security(
    options: &BenchOptions,
    metrics: &ClientMetrics,
    rounds: u32,
) -> anyhow::Result<BenchReport> {
    let mut overhead = SecurityOverhead {
        rounds,
        configs: SECURITY_CONFIGS
            .iter()
            .map(|s| SecurityFigures {
                name: s.name.to_string(),
                ..SecurityFigures::default()
            })
            .collect(),
        ..SecurityOverhead::default()
    };
    let mut last_first = None;
    let n = SECURITY_CONFIGS.len();
    for round in 0..rounds as usize {
        for turn in 0..n {
            let index = (round + turn) % n;
            let security = SECURITY_CONFIGS[index];
            eprintln!("round {}/{rounds}: {}", round + 1, security.name);
            let report = run_cluster(options, metrics, true, security, false).await?;
            overhead.lost += report.lost;
            overhead.duplicated += report.duplicated;
            overhead.corrupted += report.corrupted;
            let figures = &mut overhead.configs[index];
            figures.write_runs.push(report.write_gbps);
            figures.read_runs.push(report.read_gbps);
            if let Some(error) = &report.error {
                anyhow::bail!("{}: {error}", security.name);
            }
            if index == 0 {
                last_first = Some(report);
            }
        }
    }
    for figures in &mut overhead.configs {
        figures.write_gbps = median(&figures.write_runs);
        figures.read_gbps = median(&figures.read_runs);
    }
    let (base_write, base_read) = (
        overhead.configs[0].write_gbps,
        overhead.configs[0].read_gbps,
    );
    for figures in &mut overhead.configs {
        figures.write_ratio = ratio(figures.write_gbps, base_write);
        figures.read_ratio = ratio(figures.read_gbps, base_read);
        eprintln!(
            "{}: write {:.3} GB/s ({:.3}), read {:.3} GB/s ({:.3})",
            figures.name,
            figures.write_gbps,
            figures.write_ratio,
            figures.read_gbps,
            figures.read_ratio
        );
    }
    let mut report = last_first.context("no round ran")?;
    report.security_overhead = Some(overhead);
    Ok(report)
}

/// Runs the workload `rounds` times under each condition of [`CONDITIONS`], each on a fresh
/// embedded cluster, the conditions taking turns (the order rotating every round).
async fn compare_degraded(
    options: &BenchOptions,
    metrics: &ClientMetrics,
    security: Security,
    rounds: u32,
) -> anyhow::Result<BenchReport> {
    let mut degraded = Degraded {
        rounds,
        conditions: CONDITIONS
            .iter()
            .map(|c| ConditionFigures {
                condition: *c,
                ..ConditionFigures::default()
            })
            .collect(),
        ..Degraded::default()
    };
    let mut runs: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); CONDITIONS.len()];
    let mut last_clean = None;
    let n = CONDITIONS.len();
    for round in 0..rounds as usize {
        for turn in 0..n {
            let index = (round + turn) % n;
            let condition = CONDITIONS[index];
            eprintln!("round {}/{rounds}: {}", round + 1, condition.name());
            let before = metrics.snapshot();
            let run = BenchOptions {
                condition,
                ..options.clone()
            };
            let report = run_cluster(&run, metrics, true, security, false).await?;
            let after = metrics.snapshot();
            degraded.lost += report.lost;
            degraded.duplicated += report.duplicated;
            degraded.corrupted += report.corrupted;
            let figures = &mut degraded.conditions[index];
            figures.secs_runs.push(report.write_secs + report.read_secs);
            figures.revives += after.revives - before.revives;
            figures.timeouts += after.timeouts - before.timeouts;
            figures.hedges += after.hedges - before.hedges;
            runs[index].0.push(report.write_gbps);
            runs[index].1.push(report.read_gbps);
            if let Some(error) = &report.error {
                anyhow::bail!("{}: {error}", condition.name());
            }
            if index == 0 {
                last_clean = Some(report);
            }
        }
    }
    for (figures, (write, read)) in degraded.conditions.iter_mut().zip(&runs) {
        figures.secs = median(&figures.secs_runs);
        figures.write_gbps = median(write);
        figures.read_gbps = median(read);
    }
    let clean = degraded.conditions[0].secs;
    for figures in &mut degraded.conditions {
        figures.slowdown = ratio(figures.secs, clean);
        eprintln!(
            "{}: {:.2} s ({:.2}x clean), write {:.3} GB/s, read {:.3} GB/s, {} revives, {} timeouts, {} hedged reads",
            figures.condition.name(),
            figures.secs,
            figures.slowdown,
            figures.write_gbps,
            figures.read_gbps,
            figures.revives,
            figures.timeouts,
            figures.hedges
        );
    }
    let mut report = last_clean.context("no round ran")?;
    report.degraded = Some(degraded);
    Ok(report)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn ratio(on: f64, off: f64) -> f64 {
    if off > 0.0 {
        on / off
    } else {
        0.0
    }
}

/// Runs the workload on `options.master`, or on an embedded cluster whose servers record
/// metrics when `server_metrics` is set, under `security`. With replication 2 and `baseline`, a
/// replication-1 run of the same workload comes first.
async fn run_cluster(
    options: &BenchOptions,
    metrics: &ClientMetrics,
    server_metrics: bool,
    security: Security,
    baseline: bool,
) -> anyhow::Result<BenchReport> {
    let data_dir = match &options.data_dir {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .context("creating a data directory")?;
    // A plain run of its own cluster runs it as child processes, to tell the workers' CPU and
    // memory from the client's; comparisons and secured runs keep it in this process.
    let children = if options.master.is_none() && baseline && security == Security::PLAIN {
        let (dir, workers) = (data_dir.path().to_path_buf(), options.workers);
        let cluster =
            tokio::task::spawn_blocking(move || ChildCluster::start(&dir, workers, server_metrics))
                .await??;
        Some(cluster)
    } else {
        None
    };
    let mut probe = Probe {
        settle: options.settle,
        ..Probe::default()
    };
    if let Some(children) = &children {
        probe.client = true;
        probe.workers = children.worker_pids.clone();
        probe.worker_dirs = children.worker_dirs.clone();
    } else if options.master.is_some() {
        probe.client = true;
        probe.workers = options.worker_pids.clone();
    }
    let cluster = match (&options.master, &children) {
        (Some(_), _) | (None, Some(_)) => None,
        (None, None) => {
            let mut local = LocalOptions::new(options.workers, data_dir.path());
            local.master.metrics = server_metrics;
            local.worker.metrics = server_metrics;
            local.tls = security.tls;
            local.secret = security.auth;
            match options.condition {
                Condition::Clean => {}
                Condition::SlowDisk => local.worker.fault_write_delay = "100ms".into(),
                Condition::SlowLink => local.proxied = true,
            }
            let cluster = LocalCluster::start(local).await?;
            if options.condition == Condition::SlowLink {
                for i in 0..options.workers {
                    let link = |seed: u64| chaos::proxy::Shape {
                        latency: Duration::from_millis(20),
                        jitter: Duration::from_millis(10),
                        seed,
                        ..chaos::proxy::Shape::default()
                    };
                    let seed = 0x5eed_0f14 + 2 * i as u64;
                    cluster.shape_worker(i, link(seed), link(seed + 1))?;
                }
            }
            Some(cluster)
        }
    };
    let mut config = match (&options.master, &cluster, &children) {
        (Some(master), _, _) => ClientConfig::new(master.clone()),
        (None, Some(cluster), _) => cluster.client_config(),
        (None, None, Some(children)) => ClientConfig::new(children.master_addr.clone()),
        (None, None, None) => anyhow::bail!("no cluster to run on"),
    };
    config.compression = options.compression.batch_codec();
    if security.auth {
        config.app_secret = Some(sluice_protocol::auth::Secret::new(
            BENCH_APP_SECRET.to_vec(),
        ));
    }
    let client_with = |replication| {
        SluiceClient::with_metrics(
            ClientConfig {
                replication,
                ..config.clone()
            },
            metrics.clone(),
        )
    };
    let client = client_with(options.replication)?;
    let result = async {
        let baseline = if baseline && options.replication == 2 {
            eprintln!("baseline: replication 1");
            let report = run_on(&client_with(1)?, metrics, options, &probe, "r1").await?;
            Some(Baseline {
                write_gbps: report.write_gbps,
                read_gbps: report.read_gbps,
                lost: report.lost,
                duplicated: report.duplicated,
            })
        } else {
            None
        };
        eprintln!("replication {}", options.replication);
        let mut report = run_on(&client, metrics, options, &probe, "main").await?;
        report.replication_1 = baseline;
        anyhow::Ok(report)
    }
    .await;
    if let Some(cluster) = cluster {
        cluster.shutdown().await?;
    }
    if let Some(children) = children {
        if !matches!(&result, Ok(report) if report.error.is_none()) {
            for process in &children.processes {
                eprintln!("--- {} log ---\n{}", process.name, process.log_tail());
            }
        }
        tokio::task::spawn_blocking(move || drop(children)).await?;
    }
    let mut report = result?;
    report.workers = if options.master.is_some() {
        client
            .cluster_status()
            .await
            .map(|s| s.workers.iter().filter(|w| w.alive).count())
            .unwrap_or(0)
    } else {
        options.workers
    };
    report.tls = security.tls;
    report.auth = security.auth;
    Ok(report)
}

async fn run_on(
    client: &SluiceClient,
    metrics: &ClientMetrics,
    options: &BenchOptions,
    probe: &Probe,
    run: &str,
) -> anyhow::Result<BenchReport> {
    let app = format!(
        "bench-{run}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let key = ShuffleKey::new(app.as_str(), 0);
    let idle = probe.worker_bytes("VmRSS");
    let handle = client
        .register_shuffle(&key, options.maps, options.partitions)
        .await?;
    let records_per_map = options.bytes_per_map.div_ceil(options.record_size as u64);
    let mut report = BenchReport {
        maps: options.maps,
        partitions: options.partitions,
        record_size: options.record_size,
        verified: options.verify,
        replication: options.replication,
        records_written: records_per_map * u64::from(options.maps),
        ..BenchReport::default()
    };

    eprintln!(
        "writing {} maps x {} bytes over {} partitions",
        options.maps, options.bytes_per_map, options.partitions
    );
    report.worker_rss_idle_bytes = idle;
    let pushes_before = metrics.push_latency();
    let cpu_before = probe.cpu();
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut maps = tokio::task::JoinSet::new();
    for map in 0..options.maps {
        let permit = permits.clone().acquire_owned().await?;
        let (client, handle) = (client.clone(), handle.clone());
        let (record_size, partitions) = (options.record_size, options.partitions);
        maps.spawn(async move {
            let _permit = permit;
            let mut writer = client.writer(handle, map, 0)?;
            let mut rng = rng_seed(map);
            let mut record = Vec::with_capacity(record_size);
            let mut bytes = 0u64;
            for seq in 0..records_per_map {
                record.clear();
                records::encode(&mut record, map, seq as u32, record_size);
                let partition = (next(&mut rng) % u64::from(partitions)) as u32;
                writer.write(partition, &record).await?;
                bytes += record.len() as u64;
            }
            writer.finish().await?;
            anyhow::Ok(bytes)
        });
    }
    while let Some(done) = maps.join_next().await {
        report.write_bytes += done??;
    }
    report.write_secs = started.elapsed().as_secs_f64();
    report.write_gbps = gbps(report.write_bytes, report.write_secs);
    let cpu_written = probe.cpu();
    eprintln!("write: {:.2} GB/s", report.write_gbps);
    let pushes = metrics.push_latency().since(&pushes_before);
    let millis = |q| pushes.quantile(q).map(|d| d.as_secs_f64() * 1e3);
    report.pushes = pushes.count();
    (report.push_p50_ms, report.push_p99_ms) = (millis(0.5), millis(0.99));

    let started = Instant::now();
    let seen = Arc::new(Seen::new(options.maps, records_per_map));
    let mut readers = tokio::task::JoinSet::new();
    for range in split(options.partitions, options.concurrency.max(1)) {
        let (client, key, seen) = (client.clone(), key.clone(), seen.clone());
        let verify = options.verify;
        readers.spawn(async move {
            let mut reader = client.reader(&key, range, None).await?;
            let mut totals = ReadTotals::default();
            while let Some(block) = reader.next().await? {
                totals.bytes += block.len() as u64;
                records::parse(&block, verify, |id, _, intact| {
                    totals.records += 1;
                    if !intact {
                        totals.corrupted += 1;
                    }
                    if verify && seen.mark(id) != Some(true) {
                        totals.duplicated += 1;
                    }
                })
                .map_err(|e| anyhow::anyhow!("malformed records: {e}"))?;
            }
            anyhow::Ok(totals)
        });
    }
    let mut error = None;
    while let Some(done) = readers.join_next().await {
        match done? {
            Ok(totals) => {
                report.read_bytes += totals.bytes;
                report.records_read += totals.records;
                report.duplicated += totals.duplicated;
                report.corrupted += totals.corrupted;
            }
            Err(e) => error = Some(format!("{e:#}")),
        }
    }
    report.read_secs = started.elapsed().as_secs_f64();
    report.read_gbps = gbps(report.read_bytes, report.read_secs);
    let cpu_read = probe.cpu();
    eprintln!("read: {:.2} GB/s", report.read_gbps);
    let (written, read) = (report.write_bytes, report.read_bytes);
    report.client_cpu_write_secs_per_gb =
        secs_per_gb(cpu_before.client, cpu_written.client, written);
    report.client_cpu_read_secs_per_gb = secs_per_gb(cpu_written.client, cpu_read.client, read);
    report.client_cpu_secs_per_gb = secs_per_gb(cpu_before.client, cpu_read.client, written);
    report.worker_cpu_write_secs_per_gb =
        secs_per_gb(cpu_before.workers, cpu_written.workers, written);
    report.worker_cpu_read_secs_per_gb = secs_per_gb(cpu_written.workers, cpu_read.workers, read);
    report.worker_cpu_secs_per_gb = secs_per_gb(cpu_before.workers, cpu_read.workers, written);
    if options.verify {
        report.lost = report.records_written - seen.count();
    } else {
        report.lost = report.records_written.saturating_sub(report.records_read);
        report.duplicated = report.records_read.saturating_sub(report.records_written);
    }
    report.error = error;
    match client.unregister_shuffle(&key).await {
        Ok(()) if !probe.workers.is_empty() => {
            if !probe.deleted(&key, DELETE_TIMEOUT).await {
                eprintln!(
                    "the workers still hold the shuffle's files {}s after its deletion",
                    DELETE_TIMEOUT.as_secs()
                );
            }
            report.worker_rss_after_delete_bytes = probe.worker_bytes("VmRSS");
            tokio::time::sleep(probe.settle).await;
            report.worker_rss_settled_bytes = probe.worker_bytes("VmRSS");
        }
        Ok(()) => {}
        Err(e) => eprintln!("unregistering the benchmark shuffle failed: {e}"),
    }
    // The high-water mark, read last so it covers every other reading.
    report.worker_rss_peak_bytes = probe.worker_bytes("VmHWM");
    Ok(report)
}

/// `n` contiguous ranges covering `0..total`.
fn split(total: u32, n: usize) -> Vec<Range<u32>> {
    let n = (n as u32).clamp(1, total);
    (0..n)
        .map(|i| (total * i / n)..(total * (i + 1) / n))
        .filter(|r| !r.is_empty())
        .collect()
}

fn rng_seed(map: u32) -> u64 {
    (u64::from(map) + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_partition_once() {
        for (total, n) in [(1, 4), (200, 3), (7, 7), (10_000, 2)] {
            let ranges = split(total, n);
            let covered: Vec<u32> = ranges.into_iter().flatten().collect();
            assert_eq!(covered, (0..total).collect::<Vec<_>>());
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(ratio(0.95, 1.0), 0.95);
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }

    #[test]
    fn codecs_alone_round_trip_and_measure_something() {
        for codec in [batch::Codec::Lz4, batch::Codec::Zstd] {
            let figures = measure_codec(codec, 4 << 20, 2, 100, 256 * 1024).unwrap();
            assert_eq!(figures.threads, 2);
            assert!(figures.compress_gbps > 0.0 && figures.decompress_gbps > 0.0);
            assert!(figures.ratio > 0.0 && figures.ratio < 1.0, "{figures:?}");
        }
        assert!(measure_codec(batch::Codec::None, 4 << 20, 2, 100, 256 * 1024).is_err());
    }

    #[test]
    fn proc_tells_this_process_cpu_and_memory() {
        assert!(Proc::Me.cpu_secs().unwrap() >= 0.0);
        assert!(Proc::Me.status_bytes("VmRSS").unwrap() > 0);
        assert!(Proc::Me.status_bytes("VmHWM").unwrap() > 0);
        assert_eq!(Proc::Me.status_bytes("NoSuchKey"), None);
        assert_eq!(secs_per_gb(Some(1.0), Some(3.0), 2_000_000_000), Some(1.0));
        assert_eq!(secs_per_gb(None, Some(3.0), 1), None);
        assert_eq!(secs_per_gb(Some(1.0), Some(3.0), 0), None);
    }

    #[test]
    fn loopback_measures_something() {
        assert!(measure_loopback(8 << 20).unwrap() > 0.0);
    }
}
