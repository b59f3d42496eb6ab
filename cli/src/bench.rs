//! `sluice bench`: a load generator over the Rust client.
//!
//! Writes `maps` map outputs of `bytes_per_map` bytes of self-checking records (see
//! [`crate::records`]) spread uniformly over `partitions`, then reads every partition back. With
//! `verify`, every record's payload is checked and each record id is tracked in a bitset, so
//! `lost` and `duplicated` are exact. The same run measures this machine's loopback TCP
//! throughput so the figures can be read against the machine's own limit.
//!
//! The benchmark's client counts into a metrics registry of its own: the report carries its
//! totals (`client_metrics`), and `admin_listen` serves them on `/metrics` while the run lasts.
//! `metrics_overhead` measures what the servers' metrics cost: the same workload on an embedded
//! cluster with `metrics = true` and with `metrics = false`, alternating, round after round.
//! `security_overhead` does the same over the security configurations of
//! [`SECURITY_CONFIGS`] (plain, TLS on every port), configurations taking turns in each round.

use std::io::{Read, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use sluice_client::{ClientConfig, ClientMetrics, ClientMetricsSnapshot, SluiceClient};
use sluice_ops::Telemetry;
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
    /// Whether the run had TLS on every port (`--tls`).
    pub tls: bool,
    /// Whether the run had a cluster secret and an authenticated client (`--auth`).
    pub auth: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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

/// The client's totals (see [`ClientMetricsSnapshot`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientFigures {
    pub push_bytes: u64,
    pub push_retries: u64,
    pub revives: u64,
    pub fetch_retries: u64,
    pub data_lost: u64,
}

impl From<ClientMetricsSnapshot> for ClientFigures {
    fn from(s: ClientMetricsSnapshot) -> ClientFigures {
        ClientFigures {
            push_bytes: s.push_bytes,
            push_retries: s.push_retries,
            revives: s.revives,
            fetch_retries: s.fetch_retries,
            data_lost: s.data_lost,
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
        self.error.is_none()
            && self.lost == 0
            && self.duplicated == 0
            && self.corrupted == 0
            && baseline_clean
            && overhead_clean
            && security_clean
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
        options.security_overhead.is_none() || options.metrics_overhead.is_none(),
        "--security-overhead and --metrics-overhead: one comparison at a time"
    );
    let loopback_gbps = if options.loopback_bytes > 0 {
        let bytes = options.loopback_bytes;
        tokio::task::spawn_blocking(move || measure_loopback(bytes)).await??
    } else {
        0.0
    };
    eprintln!("loopback tcp: {loopback_gbps:.2} GB/s");
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
    let mut report = match (options.metrics_overhead, options.security_overhead) {
        (Some(rounds), _) => compare_metrics(options, &metrics, security, rounds.max(1)).await?,
        (None, Some(rounds)) => compare_security(options, &metrics, rounds.max(1)).await?,
        (None, None) => run_cluster(options, &metrics, true, security, true).await?,
    };
    report.loopback_gbps = loopback_gbps;
    report.client_metrics = metrics.snapshot().into();
    Ok(report)
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
    let data_dir = tempfile::tempdir().context("creating a data directory")?;
    let cluster = match &options.master {
        Some(_) => None,
        None => {
            let mut local = LocalOptions::new(options.workers, data_dir.path());
            local.master.metrics = server_metrics;
            local.worker.metrics = server_metrics;
            local.tls = security.tls;
            local.secret = security.auth;
            Some(LocalCluster::start(local).await?)
        }
    };
    let mut config = match (&options.master, &cluster) {
        (Some(master), _) => ClientConfig::new(master.clone()),
        (None, Some(cluster)) => cluster.client_config(),
        (None, None) => unreachable!("an embedded cluster was started"),
    };
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
            let report = run_on(&client_with(1)?, options, "r1").await?;
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
        let mut report = run_on(&client, options, "main").await?;
        report.replication_1 = baseline;
        anyhow::Ok(report)
    }
    .await;
    if let Some(cluster) = cluster {
        cluster.shutdown().await?;
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
    options: &BenchOptions,
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
    eprintln!("write: {:.2} GB/s", report.write_gbps);

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
    eprintln!("read: {:.2} GB/s", report.read_gbps);
    if options.verify {
        report.lost = report.records_written - seen.count();
    } else {
        report.lost = report.records_written.saturating_sub(report.records_read);
        report.duplicated = report.records_read.saturating_sub(report.records_written);
    }
    report.error = error;
    if let Err(e) = client.unregister_shuffle(&key).await {
        eprintln!("unregistering the benchmark shuffle failed: {e}");
    }
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
    fn loopback_measures_something() {
        assert!(measure_loopback(8 << 20).unwrap() > 0.0);
    }
}
