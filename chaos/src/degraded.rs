//! The degraded scenarios: links and a disk that are slow rather than dead.
//!
//! A slow disk, and a worker that is slow as a replica, must be called slow by the master
//! (heartbeats carry flush and replica-ack latency) and get no partition of the second shuffle.
//!
//! Each scenario runs the verified workload in one invocation on two clusters started alike
//! (the same proxies in the same places): first clean, then with its sickness. On each, two
//! shuffles run one after the other, and between them the harness asks the master which
//! workers it finds slow; the second shuffle shows where placement then puts partitions. Every
//! shuffle must read every record exactly once (the clean run is the control); the sick run's
//! first shuffle is judged, and the report carries the sick run's slowdown against the clean
//! one with the client's revives, retries, timeouts and hedged reads during it. A link
//! scenario whose proxies shaped nothing fails: its fault never happened.
//!
//! The sicknesses, each seeded so a run injects the same delays:
//! - slow network: every link of every worker (push, replica forwards, fetch, to the master)
//!   and the client's link to the master get 20 ms + up to 10 ms of jitter each way;
//! - slow worker link: one worker's links get 150 ms + up to 100 ms;
//! - thin link: one worker's links carry 1 MB/s each way;
//! - stalling link: one worker's links freeze for 3 s after every 100 ms, then move on;
//! - reset link: one worker's connections are reset (RST) mid-frame, pushes after 256 KiB and
//!   fetches after 4 KiB of requests;
//! - slow disk: one worker's disk writes take 50-200 ms each (its `fault_write_delay`);
//! - slow master: the client's and every worker's links to the master get 200 ms + up to
//!   50 ms.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sluice_client::{ClientMetricsSnapshot, SluiceClient};
use sluice_protocol::ShuffleKey;

use crate::cluster::{toml_text, Cluster, WorkerSpec};
use crate::proxy::{Proxy, Shape};
use crate::setup::{Ctx, Observed};
use crate::workload::{Reads, Writes};

/// What is wrong in a degraded scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sickness {
    SlowNetwork,
    SlowWorkerLink,
    ThinLink,
    StallingLink,
    ResetLink,
    SlowDisk,
    SlowMaster,
}

/// The seed of every degraded scenario's delays.
const SEED: u64 = 0x5eed_0f14;
/// The sick worker when one is.
const SICK: usize = 0;
const WORKERS: usize = 4;

impl Sickness {
    fn describe(self) -> &'static str {
        match self {
            Sickness::SlowNetwork => {
                "every link (push, replica, fetch, master; client to master): 20 ms + 0-10 ms jitter each way"
            }
            Sickness::SlowWorkerLink => "w0's push, fetch and master links: 150 ms + 0-100 ms jitter",
            Sickness::ThinLink => "w0's push, fetch and master links: 1 MB/s each way",
            Sickness::StallingLink => "w0's push, fetch and master links: frozen 3 s after every 100 ms",
            Sickness::ResetLink => {
                "w0's connections reset mid-frame: pushes after 256 KiB, fetches after 4 KiB of requests"
            }
            Sickness::SlowDisk => "w0's disk writes: 50-200 ms each",
            Sickness::SlowMaster => {
                "the client's and every worker's link to the master: 200 ms + 0-50 ms jitter"
            }
        }
    }

    /// Every worker behind proxies, or only the sick one.
    fn all_proxied(self) -> bool {
        matches!(self, Sickness::SlowNetwork | Sickness::SlowMaster)
    }

    /// The client reaches the master through a proxy.
    fn client_master_proxied(self) -> bool {
        self.all_proxied()
    }

    fn specs(self, sick: bool) -> Vec<WorkerSpec> {
        (0..WORKERS)
            .map(|i| {
                let spec = WorkerSpec {
                    proxied: self.all_proxied() || i == SICK,
                    ..WorkerSpec::default()
                };
                if sick && i == SICK && self == Sickness::SlowDisk {
                    spec.set("fault_write_delay", toml_text("50ms..200ms"))
                } else {
                    spec
                }
            })
            .collect()
    }

    /// Shapes the links of the sick cluster.
    fn inject(self, cluster: &Cluster, master_proxy: Option<&Proxy>) -> anyhow::Result<()> {
        let ms = Duration::from_millis;
        let clean = Shape::default();
        let latency = |latency: u64, jitter: u64| Shape {
            latency: ms(latency),
            jitter: ms(jitter),
            seed: SEED,
            ..Shape::default()
        };
        match self {
            Sickness::SlowNetwork => {
                for i in 0..cluster.workers.len() {
                    cluster.shape(i, latency(20, 10), latency(20, 10))?;
                }
                if let Some(proxy) = master_proxy {
                    proxy.shape(latency(20, 10));
                }
            }
            Sickness::SlowWorkerLink => {
                cluster.shape(SICK, latency(150, 100), latency(150, 100))?;
            }
            Sickness::ThinLink => {
                let thin = Shape {
                    bandwidth: 1_000_000,
                    seed: SEED,
                    ..Shape::default()
                };
                cluster.shape(SICK, thin, thin)?;
            }
            Sickness::StallingLink => {
                let stalls = Shape {
                    stall_every: Duration::from_millis(100),
                    stall_for: Duration::from_secs(3),
                    seed: SEED,
                    ..Shape::default()
                };
                cluster.shape(SICK, stalls, stalls)?;
            }
            Sickness::ResetLink => {
                let resets = |after: u64| Shape {
                    reset_after: after,
                    seed: SEED,
                    ..Shape::default()
                };
                cluster.shape_links(SICK, resets(256 << 10), resets(4 << 10), clean)?;
            }
            Sickness::SlowDisk => {}
            Sickness::SlowMaster => {
                for i in 0..cluster.workers.len() {
                    cluster.shape(i, clean, latency(200, 50))?;
                }
                if let Some(proxy) = master_proxy {
                    proxy.shape(latency(200, 50));
                }
            }
        }
        Ok(())
    }
}

/// A degraded scenario's figures: the sick run against the clean one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DegradedFigures {
    pub clean_secs: f64,
    pub degraded_secs: f64,
    /// `degraded_secs / clean_secs`.
    pub slowdown: f64,
    /// The client's counters during the degraded run.
    pub revives: u64,
    pub push_retries: u64,
    pub fetch_retries: u64,
    pub timeouts: u64,
    pub hedges: u64,
}

/// One pass: the two shuffles' outcomes, the time they took and the client's counters.
struct Pass {
    /// The first shuffle, judged as the scenario's outcome.
    first: Observed,
    /// The second, registered once the master heard the workers' heartbeats about the first:
    /// it must read back exactly once too.
    second: Observed,
    secs: f64,
    counters: ClientMetricsSnapshot,
    /// Workers the master called slow between the shuffles.
    flagged: Vec<String>,
    /// Primaries and replicas of the second shuffle placed on the sick worker, of all.
    second_on_sick: (usize, usize, usize),
    /// `(stalled, resets, delayed)` by the proxies.
    injected: (u64, u64, u64),
}

pub(crate) async fn run(ctx: &Ctx, sickness: Sickness) -> anyhow::Result<Observed> {
    ctx.phase.set("clean run");
    let clean = pass(ctx, sickness, false).await?;
    ctx.phase
        .set(format!("degraded run: {}", sickness.describe()));
    let sick = pass(ctx, sickness, true).await?;
    let mut observed = sick.first;
    observed.injected.push(sickness.describe().to_string());
    let (stalled, resets, delayed) = sick.injected;
    observed.injected.push(format!(
        "proxies: {delayed} pieces delayed, {stalled} held by stalls, {resets} connections reset"
    ));
    let happened = match sickness {
        Sickness::StallingLink => stalled > 0,
        Sickness::ResetLink => resets > 0,
        Sickness::SlowDisk => true,
        _ => delayed > 0,
    };
    if !happened {
        observed.not_injected = Some("the proxies shaped no traffic".into());
    }
    let (primaries, replicas, partitions) = sick.second_on_sick;
    observed.injected.push(format!(
        "master's slow workers after the first shuffle: [{}]; the second shuffle put {primaries} \
         primaries and {replicas} replicas of {partitions} partitions on w{SICK}",
        sick.flagged.join(", ")
    ));
    // A slow disk, or a slow replica the primaries wait on, must be seen in the heartbeats and
    // left by placement.
    let seen_slow = match sickness {
        Sickness::SlowDisk => true,
        Sickness::SlowWorkerLink | Sickness::ThinLink => ctx.replication > 1,
        _ => false,
    };
    if seen_slow {
        let sick_id = format!("w{SICK}");
        if !sick.flagged.contains(&sick_id) {
            observed
                .failures
                .push(format!("the master never called {sick_id} slow"));
        }
        if primaries + replicas > 0 {
            observed.failures.push(format!(
                "placement still gave {sick_id} partitions of the second shuffle"
            ));
        }
    }
    for (run, shuffle) in [
        (&clean.first, "clean run, first shuffle"),
        (&clean.second, "clean run, second shuffle"),
        (&sick.second, "degraded run, second shuffle"),
    ] {
        if let Some(why) = inexact(run) {
            observed.failures.push(format!("{shuffle}: {why}"));
        }
    }
    let c = sick.counters;
    observed.degraded = Some(DegradedFigures {
        clean_secs: round(clean.secs),
        degraded_secs: round(sick.secs),
        slowdown: if clean.secs > 0.0 {
            round(sick.secs / clean.secs)
        } else {
            0.0
        },
        revives: c.revives,
        push_retries: c.push_retries,
        fetch_retries: c.fetch_retries,
        timeouts: c.timeouts,
        hedges: c.hedges,
    });
    Ok(observed)
}

/// Why a run did not read every record exactly once, if it did not.
fn inexact(run: &Observed) -> Option<String> {
    if let Some(e) = &run.write_error {
        return Some(format!("write failed: {e}"));
    }
    if let Some(e) = &run.read_error {
        return Some(format!("read failed: {e}"));
    }
    let lost = run.tally.lost(run.maps_done, run.records_per_map);
    let (duplicated, corrupted) = (run.tally.duplicated(), run.tally.corrupted);
    (lost + duplicated + corrupted > 0)
        .then(|| format!("{lost} lost, {duplicated} duplicated, {corrupted} corrupted"))
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The workload of each shuffle: long enough on a clean cluster (a second or two) for stalls
/// and heartbeats to matter.
fn workload(sizes: crate::scenario::Sizes) -> crate::workload::Workload {
    let mut workload = sizes.workload();
    if sizes.quick {
        workload.maps = 6;
        workload.partitions = 12;
        workload.records_per_map = 3000;
        workload.record_len = 800;
    }
    workload
}

/// Starts a cluster, sick or not, then registers, writes and reads the workload on it twice,
/// as two shuffles with the master's view of the workers asked between them. The time counts
/// both shuffles, from each registration to its last record read.
async fn pass(ctx: &Ctx, sickness: Sickness, sick: bool) -> anyhow::Result<Pass> {
    let name = format!("{}-{}", ctx.name, if sick { "degraded" } else { "clean" });
    let cluster = Cluster::start_with_masters(&ctx.run, &name, 1, &sickness.specs(sick)).await?;
    let master_proxy = if sickness.client_master_proxied() {
        Some(Proxy::start(Some(cluster.masters[0].addr)).await?)
    } else {
        None
    };
    let master = match &master_proxy {
        Some(proxy) => proxy.addr().to_string(),
        None => cluster.master_addr.clone(),
    };
    let mut config = ctx.run.client_config(&master, ctx.replication);
    // What users get: the timeouts adapt between these bounds.
    let defaults = sluice_client::ClientConfig::new("");
    config.request_timeout = defaults.request_timeout;
    config.request_timeout_min = defaults.request_timeout_min;
    let client = SluiceClient::new(config)?;
    if sick {
        sickness.inject(&cluster, master_proxy.as_ref())?;
    }
    let workload = workload(ctx.sizes);
    let before = client.metrics().snapshot();
    let (first, first_secs, _) = shuffle(&client, 0, &workload).await?;
    // Three of the harness's 300 ms heartbeats: the master hears what the first shuffle showed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = ctx
        .run
        .operator(&cluster.master_addr)?
        .cluster_status()
        .await?;
    let flagged = status
        .workers
        .iter()
        .filter(|w| w.slow)
        .filter_map(|w| Some(w.worker.as_ref()?.id.clone()))
        .collect();
    let (second, second_secs, handle) = shuffle(&client, 1, &workload).await?;
    let sick_id = &cluster.workers[SICK].id;
    let on_sick = |placed: &[u32]| {
        placed
            .iter()
            .filter(|at| {
                handle
                    .locations
                    .workers
                    .get(**at as usize)
                    .is_some_and(|w| &w.id == sick_id)
            })
            .count()
    };
    let second_on_sick = (
        on_sick(&handle.locations.primary_worker),
        on_sick(&handle.locations.replica_worker),
        workload.partitions as usize,
    );
    let after = client.metrics().snapshot();
    let counters = ClientMetricsSnapshot {
        push_bytes: after.push_bytes - before.push_bytes,
        push_retries: after.push_retries - before.push_retries,
        revives: after.revives - before.revives,
        fetch_retries: after.fetch_retries - before.fetch_retries,
        data_lost: after.data_lost - before.data_lost,
        timeouts: after.timeouts - before.timeouts,
        hedges: after.hedges - before.hedges,
    };
    let injected = (0..cluster.workers.len())
        .map(|i| cluster.injected(i))
        .chain(master_proxy.iter().map(|p| p.injected().counts()))
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    cluster.shutdown().await;
    Ok(Pass {
        first,
        second,
        secs: first_secs + second_secs,
        counters,
        flagged,
        second_on_sick,
        injected,
    })
}

/// Registers shuffle `id`, writes `workload` (every map at once) and reads it back: what was
/// seen, the seconds it took, and the shuffle's placement.
async fn shuffle(
    client: &SluiceClient,
    id: u32,
    workload: &crate::workload::Workload,
) -> anyhow::Result<(Observed, f64, std::sync::Arc<sluice_client::ShuffleHandle>)> {
    let key = ShuffleKey::new("chaos", id);
    let started = Instant::now();
    let mut observed = Observed {
        records_per_map: workload.records_per_map,
        ..Observed::default()
    };
    let handle = client
        .register_shuffle(&key, workload.maps, workload.partitions)
        .await
        .context("registering the shuffle")?;
    // Every map at once, as a stage's tasks run.
    let mut maps = tokio::task::JoinSet::new();
    for map in 0..workload.maps {
        let mut writes = Writes::one_map(client.clone(), handle.clone(), workload.clone(), map, 0);
        maps.spawn(async move {
            let result = writes.all().await;
            (result, writes.written(), writes.finished_maps)
        });
    }
    while let Some(joined) = maps.join_next().await {
        let (result, written, finished) = joined.context("a map task")?;
        observed.written += written;
        observed.maps_done += finished;
        if let Err(e) = result {
            observed.write_error.get_or_insert(e);
        }
    }
    if observed.write_error.is_none() {
        match Reads::open(client, &key, workload).await {
            Ok(mut reads) => {
                let result = reads.to_end().await;
                observed.tally = reads.tally;
                observed.read_error = result.err();
            }
            Err(e) => observed.read_error = Some(e),
        }
    }
    Ok((observed, started.elapsed().as_secs_f64(), handle))
}
