//! `chaos`: fault injection against a real Sluice cluster of `sluice` processes on loopback.
//!
//! A run executes scenarios one after another. Each scenario is one function over shared steps
//! ([`setup`]): start its own cluster ([`cluster::Cluster`]: a master, or a Raft group of three,
//! and workers configured by TOML files, per-process logs under the run directory, a TCP
//! [`proxy::Proxy`] in front of a worker that is to be cut off, a tmpfs under a worker whose
//! disk is to fill up), register a shuffle, write the workload ([`workload::Writes`]: M maps × P
//! partitions of [`records`] that carry their own id and a payload derived from it), inject
//! faults at fixed points of the workload (after map m record r, after the reader took n
//! blocks, after the commit), read
//! everything back ([`workload::Reads`]) and judge the result ([`scenario::run`]): every
//! written id read exactly once and intact passes; with replication 1 a data-loss error from
//! the reader passes too; short, repeated or changed data without an error fails.
//!
//! - [`faults`]: kills, stops, restarts (one worker, or all in turn), a network cut, a flipped
//!   byte, a full disk.
//! - [`ha`]: the masters' faults: the Raft leader of three masters SIGKILLed (while pushing,
//!   while reading, as the commit starts) or SIGSTOPped (the deposed leader must refuse a
//!   write), a lone master restarted on its data directory (mid-stage, or with the commit
//!   pending); each measures the failover, from the fault to the first write a master accepted.
//! - [`degraded`]: links and a disk that are slow rather than dead (latency with jitter, a
//!   bandwidth cap, stalls, resets mid-frame, 50-200 ms disk writes, a slow master), each run
//!   clean and then sick in one invocation; the report gives the slowdown and the client's
//!   revives, retries, timeouts and hedged reads.
//! - [`drain`]: workers told to go (SIGTERM with a grace period, as Kubernetes stops a pod or a
//!   cloud reclaims a spot node) drain while writers push and while readers read, and with a
//!   grace period too short for the data; each reports what moved, how fast, and what was lost.
//! - [`memory`]: one worker loaded the ways that broke its memory budget (many writers, a
//!   stalled replica, skewed merged pushes, loitering connections, zero-length slices); the
//!   worker process's peak RSS must stay within budget + allowance. [`raw`] builds their raw
//!   frames and the stalled replica.
//! - [`security`]: a `--secure` run ([`Options::secure`]): a cluster secret and TLS on every port
//!   of every master and worker, made once per run and kept on its [`Run`]; every client of the
//!   harness authenticates (one application secret per run), status polls sign as the operator,
//!   raw connections and the stalled replica speak TLS and hold sessions as cluster principals.
//!
//! Every child is SIGKILLed when its handle drops, dies with the harness (`PR_SET_PDEATHSIG`),
//! and a final sweep ([`cluster::Run::sweep`]) kills anything left.
//!
//! [`run`] returns a [`Report`]; [`Report::table`] and [`Report::json`] print it.

pub mod cluster;
pub mod degraded;
pub mod drain;
pub mod faults;
pub mod ha;
pub mod memory;
pub mod proxy;
pub mod raw;
pub mod records;
pub mod scenario;
pub mod security;
pub mod setup;
pub mod workload;

use std::path::PathBuf;

use serde::Serialize;

pub use cluster::Run;
pub use scenario::{Outcome, Scenario, Sizes, Verdict};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `sluice` binary.
    pub sluice: PathBuf,
    /// Where the per-scenario directories (logs, data) go.
    pub run_dir: PathBuf,
    /// Scenario and replication pairs, in order.
    pub runs: Vec<(Scenario, u32)>,
    /// Small sizes and short deadlines.
    pub quick: bool,
    /// Config keys and TOML values (`("memory_budget", "\"1GiB\"")`) for every worker.
    pub worker_settings: Vec<(String, String)>,
    /// A cluster secret and TLS on every port of every master and worker; the harness
    /// authenticates and speaks TLS on every connection ([`security`]).
    pub secure: bool,
}

impl Options {
    /// `runs` of the `sluice` binary at `sluice`, in `run_dir`, with default settings.
    pub fn new(sluice: PathBuf, run_dir: PathBuf, runs: Vec<(Scenario, u32)>) -> Options {
        Options {
            sluice,
            run_dir,
            runs,
            quick: false,
            worker_settings: Vec::new(),
            secure: false,
        }
    }

    /// Every scenario with each of its replications.
    pub fn all_runs() -> Vec<(Scenario, u32)> {
        Scenario::ALL
            .into_iter()
            .flat_map(|s| s.replications().iter().map(move |r| (s, *r)))
            .collect()
    }
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenarios: Vec<Outcome>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub run_dir: PathBuf,
    /// Children the final sweep had to kill (0 unless a handle leaked).
    pub swept: usize,
    /// Whether the cluster ran with a cluster secret and TLS, and the harness authenticated.
    pub secure: bool,
}

impl Report {
    /// True when every scenario passed (none failed, none skipped).
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.skipped == 0 && self.swept == 0
    }

    /// A fixed-width table, one row per scenario, then each row's detail.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.secure {
            out.push_str("cluster secret and TLS on every port; every client authenticated\n");
        }
        out.push_str(&format!(
            "{:<28} {:>4} {:>10} {:>10} {:>8} {:>10} {:>9} {:>7}  {}\n",
            "scenario",
            "repl",
            "written",
            "read",
            "lost",
            "duplicated",
            "corrupted",
            "seconds",
            "verdict"
        ));
        for o in &self.scenarios {
            out.push_str(&format!(
                "{:<28} {:>4} {:>10} {:>10} {:>8} {:>10} {:>9} {:>7.1}  {}\n",
                o.scenario,
                o.replication,
                o.written,
                o.read,
                o.lost,
                o.duplicated,
                o.corrupted,
                o.seconds,
                o.verdict.label()
            ));
        }
        out.push('\n');
        for o in &self.scenarios {
            out.push_str(&format!(
                "{} r{}: {}\n",
                o.scenario, o.replication, o.detail
            ));
        }
        let failovers: Vec<_> = self
            .scenarios
            .iter()
            .filter_map(|o| Some((o, o.failover_ms?)))
            .collect();
        if !failovers.is_empty() {
            out.push_str(&format!(
                "\nmaster failover (from the SIGKILL or SIGSTOP to the first write a master \
                 accepted)\n{:<28} {:>4} {:>8}\n",
                "scenario", "repl", "ms"
            ));
            for (o, ms) in failovers {
                out.push_str(&format!(
                    "{:<28} {:>4} {:>8}\n",
                    o.scenario, o.replication, ms
                ));
            }
        }
        let degraded: Vec<_> = self
            .scenarios
            .iter()
            .filter_map(|o| Some((o, o.degraded.as_ref()?)))
            .collect();
        if !degraded.is_empty() {
            out.push_str(&format!(
                "\ndegraded runs against a clean run of the same workload (seconds; client counters \
                 of the degraded run)\n{:<20} {:>4} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>6}\n",
                "scenario",
                "repl",
                "clean",
                "degraded",
                "slowdown",
                "revives",
                "push_rt",
                "fetch_rt",
                "timeouts",
                "hedges"
            ));
            for (o, d) in degraded {
                out.push_str(&format!(
                    "{:<20} {:>4} {:>7.2} {:>8.2} {:>7.2}x {:>7} {:>7} {:>7} {:>8} {:>6}\n",
                    o.scenario,
                    o.replication,
                    d.clean_secs,
                    d.degraded_secs,
                    d.slowdown,
                    d.revives,
                    d.push_retries,
                    d.fetch_retries,
                    d.timeouts,
                    d.hedges
                ));
            }
        }
        let measured: Vec<_> = self
            .scenarios
            .iter()
            .filter_map(|o| Some((o, o.memory.as_ref()?)))
            .collect();
        if !measured.is_empty() {
            out.push_str(&format!(
                "\nworker process memory (MiB; peak = VmHWM, sampled = largest VmRSS, accounted = \
                 largest in heartbeats)\n{:<20} {:>4} {:>8} {:>8} {:>9} {:>7} {:>9} {:>7}  {}\n",
                "scenario",
                "repl",
                "peak",
                "sampled",
                "accounted",
                "budget",
                "allowance",
                "limit",
                "within"
            ));
            let mib = |bytes: u64| format!("{:.1}", bytes as f64 / (1 << 20) as f64);
            for (o, m) in measured {
                out.push_str(&format!(
                    "{:<20} {:>4} {:>8} {:>8} {:>9} {:>7} {:>9} {:>7}  {}\n",
                    o.scenario,
                    o.replication,
                    mib(m.peak_rss),
                    mib(m.sampled_rss),
                    mib(m.accounted),
                    mib(m.budget),
                    mib(m.allowance),
                    mib(m.limit()),
                    if m.within() { "yes" } else { "NO" }
                ));
            }
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Runs the scenarios one after another and reports. Must be called inside a multi-threaded
/// tokio runtime.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    if !options.sluice.is_file() {
        anyhow::bail!(
            "no sluice binary at {} (build it with `cargo build -p sluice`, or pass --sluice)",
            options.sluice.display()
        );
    }
    std::fs::create_dir_all(&options.run_dir)?;
    let mut harness = Run::new(options.sluice.clone(), options.run_dir.clone());
    harness.worker_settings = options.worker_settings.clone();
    if options.secure {
        harness.secure().await?;
    }
    let sizes = Sizes::new(options.quick);
    let mut scenarios = Vec::new();
    for (scenario, replication) in &options.runs {
        scenarios.push(scenario::run(&harness, *scenario, *replication, sizes).await);
    }
    let swept = harness.sweep();
    let count = |v: Verdict| scenarios.iter().filter(|o| o.verdict == v).count();
    let passed = scenarios.iter().filter(|o| o.verdict.passed()).count();
    let skipped = count(Verdict::Skipped);
    Ok(Report {
        failed: scenarios.len() - passed - skipped,
        passed,
        skipped,
        scenarios,
        run_dir: options.run_dir.clone(),
        swept,
        secure: options.secure,
    })
}
