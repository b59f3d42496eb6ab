//! The memory scenarios: does a worker stay within its `memory_budget` when it is loaded in the
//! ways the correctness review found to break it?
//!
//! Each starts one worker with a budget of [`BUDGET`], watches the worker *process* (peak
//! resident set from `/proc/<pid>/status`: `VmHWM` at the end, `VmRSS` sampled every 50 ms, and
//! the memory the worker accounts for, from its heartbeats) while it loads it, and fails when
//! the peak exceeds budget + [`ALLOWANCE`]. Data written through the client is read back and
//! judged as everywhere else (exactly once); raw pushes must all be answered (acked, `Busy` or
//! another error) within a bound: a push the worker just holds is a failure.
//!
//! - `mem-writers`: 40 writers, each on its own connection with several 1-4 MiB pushes in
//!   flight, ten times what the budget holds.
//! - `mem-stalled-replica`: 1 MiB pushes to a primary whose replica accepts connections and
//!   never reads (review finding 3a).
//! - `mem-skewed-merged`: merged pushes of 1 MiB to a hot partition plus 128 B to a cold one
//!   (finding 3b).
//! - `mem-idle-connections`: 1000 idle connections and 1000 that stop half-way through a
//!   1 MiB frame, while the verified workload runs (finding 3c).
//! - `mem-zero-slices`: pushes of a million zero-length slices each (finding 9).

use std::time::Duration;

use serde::Serialize;
use sluice_client::SluiceClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{toml_text, Cluster, WorkerSpec};
use crate::raw::{self, Loiterers, StalledWorker};
use crate::setup::{Ctx, Observed, Phase, Setup};
use crate::workload::{Shape, Workload, Writes};

/// The worker's `memory_budget` in every memory scenario.
pub const BUDGET: u64 = 64 << 20;

/// What the worker process may hold above its budget: code, runtime and thread stacks, the
/// read buffers of idle connections, allocator slack.
pub const ALLOWANCE: u64 = 48 << 20;

/// The connection limits every memory scenario's worker runs with; `mem-idle-connections`
/// requires the worker to close every loitering connection within [`CLOSE_LIMIT`].
pub const LIMIT_SETTINGS: [(&str, &str); 4] = [
    // A connection that sends nothing for this long is closed.
    ("connection_idle_timeout", "\"5s\""),
    // A frame whose bytes stop arriving for this long is abandoned and its connection closed.
    ("frame_read_timeout", "\"5s\""),
    // Connections the push and fetch ports each keep open; above the scenario's 2000 plus
    // the workload's, so the cap is configured but not what closes them.
    ("max_connections", "4096"),
    // The same per address: every loiterer comes from 127.0.0.1, and at the default (512)
    // three in four would be closed on accept, before they could hold any memory.
    ("max_connections_per_ip", "4096"),
];

/// With [`LIMIT_SETTINGS`]: how long after they were opened every loitering connection must
/// be closed (either timeout plus slack).
const CLOSE_LIMIT: Duration = Duration::from_secs(15);

/// The worker process's memory during a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryFigures {
    /// Peak resident set of the worker process: `VmHWM` of `/proc/<pid>/status`, bytes.
    pub peak_rss: u64,
    /// Largest `VmRSS` sampled every 50 ms.
    pub sampled_rss: u64,
    /// Largest memory use the worker reported in its heartbeats (what it accounts for).
    pub accounted: u64,
    pub budget: u64,
    pub allowance: u64,
    pub samples: u64,
}

impl MemoryFigures {
    /// What the peak may reach: budget plus allowance.
    pub fn limit(&self) -> u64 {
        self.budget + self.allowance
    }

    pub fn within(&self) -> bool {
        self.peak_rss <= self.limit()
    }
}

/// `bytes` in MiB, one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The worker of every memory scenario: the budget and the connection limits.
fn memory_worker() -> WorkerSpec {
    let mut spec =
        WorkerSpec::default().set("memory_budget", toml_text(&format!("{}MiB", BUDGET >> 20)));
    for (key, value) in LIMIT_SETTINGS {
        spec = spec.set(key, value);
    }
    spec
}

/// Reads one `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in bytes.
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// What an [`RssWatch`] sampled.
#[derive(Debug, Default)]
struct Sampled {
    rss: u64,
    accounted: u64,
    samples: u64,
    /// The largest `VmRSS` in each phase of the scenario, in the order the phases came.
    by_phase: Vec<(String, u64)>,
}

/// Samples a worker process's resident set, and the memory the master lists for it, until
/// [`RssWatch::finish`].
pub(crate) struct RssWatch {
    pid: u32,
    stop: watch::Sender<bool>,
    task: JoinHandle<Sampled>,
}

impl RssWatch {
    pub(crate) fn start(pid: u32, client: SluiceClient, worker: String, phase: Phase) -> RssWatch {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut sampled = Sampled::default();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                if let Some(now) = proc_status(pid, "VmRSS") {
                    sampled.rss = sampled.rss.max(now);
                    sampled.samples += 1;
                    let phase = phase.get();
                    match sampled.by_phase.iter_mut().find(|(p, _)| *p == phase) {
                        Some((_, max)) => *max = (*max).max(now),
                        None => sampled.by_phase.push((phase, now)),
                    }
                }
                let status =
                    tokio::time::timeout(Duration::from_millis(500), client.cluster_status());
                if let Ok(Ok(status)) = status.await {
                    for w in &status.workers {
                        if w.worker.as_ref().is_some_and(|i| i.id == worker) {
                            sampled.accounted = sampled.accounted.max(w.memory_used_bytes);
                        }
                    }
                }
            }
            sampled
        });
        RssWatch { pid, stop, task }
    }

    /// Reads the peak (before the worker is stopped), stops sampling, and records the figures
    /// in `observed`; a peak above budget + allowance is a failure.
    pub(crate) async fn finish(self, observed: &mut Observed) {
        let peak = proc_status(self.pid, "VmHWM");
        self.stop.send_replace(true);
        let sampled = self.task.await.unwrap_or_default();
        let figures = MemoryFigures {
            peak_rss: peak.unwrap_or(sampled.rss).max(sampled.rss),
            sampled_rss: sampled.rss,
            accounted: sampled.accounted,
            budget: BUDGET,
            allowance: ALLOWANCE,
            samples: sampled.samples,
        };
        let phases: Vec<String> = sampled
            .by_phase
            .iter()
            .map(|(phase, max)| format!("{phase} {}", mib(*max)))
            .collect();
        observed
            .injected
            .push(format!("largest VmRSS by phase: {}", phases.join(", ")));
        if peak.is_none() {
            observed.failures.push(format!(
                "the worker (pid {}) was gone before its peak was read",
                self.pid
            ));
        }
        if !figures.within() {
            observed.failures.push(format!(
                "worker peak RSS {} > budget {} + allowance {}",
                mib(figures.peak_rss),
                mib(figures.budget),
                mib(figures.allowance)
            ));
        }
        observed.memory = Some(figures);
    }
}

/// Starts the RSS watch on worker `i` of `setup`.
fn watch_worker(setup: &Setup, i: usize) -> anyhow::Result<RssWatch> {
    let pid = setup
        .cluster
        .pid(i)
        .ok_or_else(|| anyhow::anyhow!("worker {i} is not running"))?;
    Ok(RssWatch::start(
        pid,
        setup.cluster.run.operator(&setup.cluster.master_addr)?,
        setup.id(i),
        setup.phase.clone(),
    ))
}

/// Forty writers at once against one worker with a 64 MiB budget, each on its own connection
/// (its own client, as every executor has) with up to 4 pushes of 1, 2 or 4 MiB in flight:
/// ten times what the budget holds. A map whose writer ends in an error (`Busy` past its
/// retries, a timeout) is run again as the next attempt, as Spark would, up to twice; then
/// everything is read back.
pub(crate) async fn writers(ctx: &Ctx) -> anyhow::Result<Observed> {
    const WRITERS: u32 = 40;
    const INFLIGHT: usize = 4;
    const ATTEMPTS: u32 = 3;
    let bytes_per_map: u64 = if ctx.sizes.quick { 6 << 20 } else { 24 << 20 };
    let record_len = 64 << 10;
    let workload = Workload {
        maps: WRITERS,
        partitions: 4,
        records_per_map: (bytes_per_map / record_len as u64) as u32,
        record_len,
        shape: Shape::Even,
    };
    let setup = Setup::start(ctx, &[memory_worker()], workload).await?;
    let mut observed = setup.observed();
    let watch = watch_worker(&setup, 0)?;
    let push_size = |map: u32| (1usize << (map % 3)) << 20;
    let inflight: usize = (0..WRITERS).map(|m| push_size(m) * INFLIGHT).sum();
    observed.injected.push(format!(
        "{WRITERS} writers at once, each on its own connection with up to {INFLIGHT} pushes of \
         1-4 MiB in flight (up to {} in flight against a {} budget)",
        mib(inflight as u64),
        mib(BUDGET)
    ));
    let mut pending: Vec<u32> = (0..WRITERS).collect();
    let mut reruns = Vec::new();
    for attempt in 0..ATTEMPTS {
        ctx.phase.set(format!(
            "{} writers at once (attempt {attempt})",
            pending.len()
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for map in pending.drain(..) {
            let mut config = ctx
                .run
                .client_config(&setup.cluster.master_addr, ctx.replication);
            config.batch_size = 1 << 20;
            config.push_size = push_size(map);
            config.max_inflight_pushes = INFLIGHT;
            let client = SluiceClient::new(config)?;
            let mut writes = Writes::one_map(
                client,
                setup.handle.clone(),
                setup.workload.clone(),
                map,
                attempt,
            );
            tasks.spawn(async move { (map, writes.all().await) });
        }
        while let Some(joined) = tasks.join_next().await {
            let (map, result) = joined?;
            match result {
                Ok(()) => observed.maps_done += 1,
                Err(e) => {
                    reruns.push(format!("map {map} attempt {attempt}: {e}"));
                    if attempt + 1 == ATTEMPTS {
                        observed.write_error.get_or_insert(e);
                    }
                    pending.push(map);
                }
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    observed.written = u64::from(observed.maps_done) * u64::from(setup.workload.records_per_map);
    if !reruns.is_empty() {
        observed.injected.push(format!(
            "{} map attempts ended in an error and were run again (first: {})",
            reruns.len(),
            reruns[0]
        ));
    }
    setup.read_if_written(&mut observed).await;
    watch.finish(&mut observed).await;
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// A primary (a real worker) whose replica accepts connections and never reads: 1 MiB pushes
/// to the primary's partitions must be answered (`Busy` or an error) within
/// [`PUSH_ANSWER_LIMIT`], and the primary must not keep what it cannot forward.
pub(crate) async fn stalled_replica(ctx: &Ctx) -> anyhow::Result<Observed> {
    const PUSH_ANSWER_LIMIT: Duration = Duration::from_secs(15);
    let pushes = if ctx.sizes.quick { 400 } else { 1500 };
    ctx.phase.set("starting the cluster");
    let cluster = Cluster::start(&ctx.run, &ctx.name, &[memory_worker()]).await?;
    let stalled = StalledWorker::start(&ctx.run, &cluster.master_addr, "w9-stalled").await?;
    cluster.wait_alive(2).await?;
    let client = SluiceClient::new(ctx.run.client_config(&cluster.master_addr, 2))?;
    let key = sluice_protocol::ShuffleKey::new("chaos", 0);
    let handle = client.register_shuffle(&key, 1, 8).await?;
    let locations = &handle.locations;
    let name = |index: u32| locations.workers.get(index as usize).map(|w| w.id.as_str());
    let targets: Vec<(u32, u32)> = (0..handle.num_partitions)
        .filter(|p| {
            name(locations.primary_worker[*p as usize]) == Some("w0")
                && locations
                    .replica_worker
                    .get(*p as usize)
                    .and_then(|r| name(*r))
                    == Some(stalled.id.as_str())
        })
        .map(|p| (p, locations.epoch[p as usize]))
        .collect();
    if targets.is_empty() {
        anyhow::bail!(
            "placement gave w0 no primary whose replica is {}",
            stalled.id
        );
    }
    let pid = cluster
        .pid(0)
        .ok_or_else(|| anyhow::anyhow!("w0 is not running"))?;
    let operator = ctx.run.operator(&cluster.master_addr)?;
    let watch = RssWatch::start(pid, operator, "w0".into(), ctx.phase.clone());
    let mut observed = Observed::default();
    ctx.phase.set(format!(
        "pushing {pushes} x 1 MiB to w0, whose replica never reads"
    ));
    let frames = raw::push_frames(&key, &targets, 1 << 20);
    let answers = raw::send_pushes(
        &ctx.run,
        &cluster.workers[0].push,
        &frames,
        pushes,
        16,
        16,
        PUSH_ANSWER_LIMIT,
    )
    .await;
    observed.injected.push(format!(
        "{} (a fake worker that accepts and never reads) is the replica of w0's partitions \
         {:?}; {pushes} pushes of 1 MiB to w0 over 16 connections, 16 in flight each: {}",
        stalled.id,
        targets.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        answers.summary()
    ));
    if answers.unanswered > 0 {
        observed.failures.push(format!(
            "{} of {pushes} pushes got no answer within {PUSH_ANSWER_LIMIT:?}",
            answers.unanswered
        ));
    }
    watch.finish(&mut observed).await;
    drop(stalled);
    cluster.shutdown().await;
    Ok(observed)
}

/// Merged pushes that each carry 1 MiB for a hot partition and 128 B for a cold one (a writer
/// whose buffers are cut together because it buffered its limit): the hot partition's bytes are
/// flushed, the cold one's small slices wait for more. Then everything is read back.
pub(crate) async fn skewed_merged(ctx: &Ctx) -> anyhow::Result<Observed> {
    let (maps, pushes_per_map) = if ctx.sizes.quick { (2, 150) } else { (4, 375) };
    let hot_len = (1 << 20) - 64;
    let workload = Workload {
        maps,
        partitions: 2,
        records_per_map: 2 * pushes_per_map,
        record_len: hot_len,
        shape: Shape::Alternate {
            cold: 0,
            cold_len: 128,
            hot: 1,
        },
    };
    // A record to the cold partition, then one to the hot one: the writer has buffered more
    // than `max_buffered` and cuts both buffers into batches, which fill one push.
    let setup = Setup::start_with(ctx, &[memory_worker()], workload, |config| {
        config.batch_size = 2 << 20;
        config.max_buffered = 1 << 20;
        config.push_size = 1 << 20;
        config.compression = sluice_protocol::batch::Codec::None;
    })
    .await?;
    let mut observed = setup.observed();
    let watch = watch_worker(&setup, 0)?;
    observed.injected.push(format!(
        "{} merged pushes of a 1 MiB batch to partition 1 and a 128 B record to partition 0",
        maps * pushes_per_map
    ));
    setup.write_all(&mut observed).await;
    setup.read_if_written(&mut observed).await;
    watch.finish(&mut observed).await;
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// 1000 idle connections and 1000 that sent the head of a 1 MiB push, its header and half its
/// body, all left open on the push port while the verified workload runs. The workload must
/// complete exactly once; how many loiterers the worker closed is reported, and every
/// one must be closed within [`CLOSE_LIMIT`].
pub(crate) async fn idle_connections(ctx: &Ctx) -> anyhow::Result<Observed> {
    const IDLE: usize = 1000;
    const PARTIAL: usize = 1000;
    const BODY: u32 = 1 << 20;
    let (soft, hard) = raw::raise_fd_limit(8192);
    let setup = Setup::start(ctx, &[memory_worker()], ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let watch = watch_worker(&setup, 0)?;
    ctx.phase.set("opening 2000 connections to the push port");
    let loiterers = Loiterers::open(
        &ctx.run,
        &setup.cluster.workers[0].push,
        &setup.key,
        IDLE,
        PARTIAL,
        BODY,
        BODY as usize / 2,
    )
    .await;
    observed.injected.push(format!(
        "{} idle connections and {} that sent a 1 MiB push's head, header and 512 KiB of its \
         body to the push port ({} could not be opened; open-file limit {soft}/{hard})",
        loiterers.idle, loiterers.partial, loiterers.refused
    ));
    setup.write_all(&mut observed).await;
    setup.read_if_written(&mut observed).await;
    ctx.phase
        .set("waiting for the worker to close the loiterers");
    loiterers.wait_closed(CLOSE_LIMIT).await;
    let (idle, partial) = loiterers.closed();
    let total = loiterers.idle + loiterers.partial;
    observed.injected.push(format!(
        "{} partial connections could not send their bytes within 2s; the worker closed {idle} \
         idle and {partial} partial connections{}",
        loiterers.stuck(),
        loiterers
            .last_close()
            .map(|at| format!(", the last {at:.1?} after opening"))
            .unwrap_or_default()
    ));
    if idle + partial < total {
        observed.failures.push(format!(
            "{} of {total} loitering connections still open {CLOSE_LIMIT:?} after opening",
            total - idle - partial
        ));
    }
    watch.finish(&mut observed).await;
    drop(loiterers);
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// Pushes of a million zero-length slices each (2 MiB of header, an empty body) to partition 0,
/// then the verified workload: the worker must refuse them or hold nothing for them, answer
/// each, and keep serving.
pub(crate) async fn zero_slices(ctx: &Ctx) -> anyhow::Result<Observed> {
    const SLICES: usize = 1 << 20;
    const ANSWER_LIMIT: Duration = Duration::from_secs(30);
    let frames = if ctx.sizes.quick { 4 } else { 20 };
    let setup = Setup::start(ctx, &[memory_worker()], ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let watch = watch_worker(&setup, 0)?;
    ctx.phase.set("pushing frames of zero-length slices");
    let location = (0, setup.handle.locations.epoch[0]);
    let frame = raw::zero_slices_frame(&setup.key, location, SLICES);
    let answers = raw::send_pushes(
        &ctx.run,
        &setup.cluster.workers[0].push,
        &[frame],
        frames,
        1,
        1,
        ANSWER_LIMIT,
    )
    .await;
    observed.injected.push(format!(
        "{frames} pushes of {SLICES} zero-length slices to partition 0, then the workload: {}",
        answers.summary()
    ));
    if answers.unanswered > 0 {
        observed.failures.push(format!(
            "{} of {frames} pushes got no answer within {ANSWER_LIMIT:?}",
            answers.unanswered
        ));
    }
    setup.write_all(&mut observed).await;
    setup.read_if_written(&mut observed).await;
    watch.finish(&mut observed).await;
    setup.cluster.shutdown().await;
    Ok(observed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_judged_against_budget_plus_allowance() {
        let mut figures = MemoryFigures {
            peak_rss: BUDGET + ALLOWANCE,
            sampled_rss: 0,
            accounted: 0,
            budget: BUDGET,
            allowance: ALLOWANCE,
            samples: 1,
        };
        assert!(figures.within());
        figures.peak_rss += 1;
        assert!(!figures.within());
        assert_eq!(mib(3 << 19), "1.5 MiB");
    }

    #[test]
    fn this_process_has_a_peak() {
        let pid = std::process::id();
        let rss = proc_status(pid, "VmRSS").unwrap();
        let hwm = proc_status(pid, "VmHWM").unwrap();
        assert!(hwm >= rss && rss > 0, "{hwm} {rss}");
    }
}
