//! The scenarios: each starts its own cluster, writes and reads the workload, injects one fault
//! at a fixed point, and judges what the reader returned.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde::Serialize;
use sluice_client::{ClientConfig, ClientError, ShuffleHandle, SluiceClient};
use sluice_protocol::ShuffleKey;

use crate::cluster::{Cluster, Run, Skipped, WorkerSpec};
use crate::records::Id;
use crate::workload::{Reads, Workload, Writes};

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    KillWhilePushing,
    KillWhileReading,
    StopWhilePushing,
    Restart,
    Partition,
    Corrupt,
    DiskFull,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::KillWhilePushing,
        Scenario::KillWhileReading,
        Scenario::StopWhilePushing,
        Scenario::Restart,
        Scenario::Partition,
        Scenario::Corrupt,
        Scenario::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillWhilePushing => "kill-while-pushing",
            Scenario::KillWhileReading => "kill-while-reading",
            Scenario::StopWhilePushing => "stop-while-pushing",
            Scenario::Restart => "restart",
            Scenario::Partition => "partition",
            Scenario::Corrupt => "corrupt",
            Scenario::DiskFull => "disk-full",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The replications the scenario runs with: 2 for all, and 1 too for a kill while pushing.
    pub fn replications(self) -> &'static [u32] {
        match self {
            Scenario::KillWhilePushing => &[2, 1],
            _ => &[2],
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Every record read exactly once, intact.
    #[serde(rename = "pass")]
    Pass,
    /// Replication 1: the reader reported the loss as a data-loss error. Counts as a pass.
    #[serde(rename = "loss reported")]
    LossReported,
    #[serde(rename = "FAIL")]
    Fail,
    /// Could not run here; neither passed nor failed.
    #[serde(rename = "skipped")]
    Skipped,
}

impl Verdict {
    pub fn passed(self) -> bool {
        matches!(self, Verdict::Pass | Verdict::LossReported)
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::LossReported => "loss reported",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub replication: u32,
    pub written: u64,
    pub read: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub verdict: Verdict,
    /// What was injected and, on failure or skip, why.
    pub detail: String,
    pub seconds: f64,
}

/// Sizes of the workload and limits of a run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub maps: u32,
    pub partitions: u32,
    pub records_per_map: u32,
    pub record_len: usize,
    /// How long one scenario may take before it is failed.
    pub deadline: Duration,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                maps: 4,
                partitions: 8,
                records_per_map: 1500,
                record_len: 700,
                deadline: Duration::from_secs(60),
            }
        } else {
            Sizes {
                maps: 8,
                partitions: 16,
                records_per_map: 4000,
                record_len: 1000,
                deadline: Duration::from_secs(180),
            }
        }
    }

    fn workload(&self) -> Workload {
        Workload {
            maps: self.maps,
            partitions: self.partitions,
            records_per_map: self.records_per_map,
            record_len: self.record_len,
            hot: Vec::new(),
        }
    }

    /// Half-way through the middle map.
    fn mid_write(&self) -> Id {
        Id {
            map: self.maps / 2,
            seq: self.records_per_map / 2,
        }
    }
}

/// Raw bytes per batch: small, so there are many pushes and chunks to interrupt.
const BATCH_SIZE: usize = 32 * 1024;

/// The client settings of every scenario: short timeouts so a dead or silent worker is noticed
/// in seconds, and small batches so there are many pushes and chunks to interrupt.
fn client_config(master: &str, replication: u32) -> ClientConfig {
    ClientConfig {
        replication,
        batch_size: BATCH_SIZE,
        push_size: 128 * 1024,
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        push_retry_timeout: Duration::from_secs(60),
        layout_timeout: Duration::from_secs(60),
        ..ClientConfig::new(master)
    }
}

/// What a scenario is doing now, so a scenario that runs out of time says where it hung.
#[derive(Debug, Clone, Default)]
struct Phase(Arc<std::sync::Mutex<String>>);

impl Phase {
    fn set(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(phase = %what, "scenario phase");
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }

    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a scenario body produces; turned into an [`Outcome`] by [`judge`].
#[derive(Debug, Default)]
struct Observed {
    written: u64,
    maps_done: u32,
    records_per_map: u32,
    tally: crate::workload::Tally,
    write_error: Option<ClientError>,
    read_error: Option<ClientError>,
    injected: Vec<String>,
    /// Why the fault did not happen (the scenario then fails: nothing was verified).
    not_injected: Option<String>,
}

/// A started cluster with a registered shuffle.
struct Setup {
    cluster: Cluster,
    client: SluiceClient,
    key: ShuffleKey,
    handle: Arc<ShuffleHandle>,
    workload: Workload,
    phase: Phase,
}

impl Setup {
    async fn start(
        run: &Run,
        name: &str,
        specs: &[WorkerSpec],
        replication: u32,
        workload: Workload,
        phase: &Phase,
    ) -> anyhow::Result<Setup> {
        phase.set("starting the cluster");
        let cluster = Cluster::start(run, name, specs).await?;
        let client = SluiceClient::new(client_config(&cluster.master_addr, replication))?;
        let key = ShuffleKey::new("chaos", 0);
        let handle = client
            .register_shuffle(&key, workload.maps, workload.partitions)
            .await
            .context("registering the shuffle")?;
        Ok(Setup {
            cluster,
            client,
            key,
            handle,
            workload,
            phase: phase.clone(),
        })
    }

    /// A writer of the whole workload; its progress is the phase "writing".
    fn writes(&self) -> Writes {
        self.phase.set("writing");
        Writes::new(
            self.client.clone(),
            self.handle.clone(),
            self.workload.clone(),
        )
    }

    /// The cluster index of the worker the layout names at `index` in `locations.workers`.
    fn worker_at(&self, index: u32) -> anyhow::Result<usize> {
        let info = self
            .handle
            .locations
            .workers
            .get(index as usize)
            .ok_or_else(|| anyhow!("placement names worker #{index}, which it does not list"))?;
        self.cluster
            .index_of(&info.id)
            .ok_or_else(|| anyhow!("placement names unknown worker {}", info.id))
    }

    /// The worker holding the registered primary of partition `p`.
    fn primary_of(&self, p: u32) -> anyhow::Result<usize> {
        self.worker_at(self.handle.locations.primary_worker[p as usize])
    }

    /// The worker holding the registered replica of partition `p`, if any.
    fn replica_of(&self, p: u32) -> Option<usize> {
        let at = *self.handle.locations.replica_worker.get(p as usize)?;
        self.worker_at(at).ok()
    }

    /// Partitions whose registered primary is worker `i`.
    fn primaries_on(&self, i: usize) -> usize {
        (0..self.workload.partitions)
            .filter(|p| self.primary_of(*p).ok() == Some(i))
            .count()
    }

    fn id(&self, i: usize) -> String {
        self.cluster.workers[i].id.clone()
    }

    /// Reads everything into `observed`.
    async fn read_all(&self, observed: &mut Observed) {
        self.phase.set("reading");
        match Reads::open(&self.client, &self.key, &self.workload).await {
            Ok(mut reads) => {
                let result = reads.to_end().await;
                observed.tally = reads.tally;
                observed.read_error = result.err();
            }
            Err(e) => observed.read_error = Some(e),
        }
    }

    /// Waits until the shuffle is committed (a reader's open waits for the layout).
    async fn committed(&self) -> anyhow::Result<()> {
        self.phase.set("waiting for the commit");
        Reads::open(&self.client, &self.key, &self.workload)
            .await
            .context("waiting for the commit")?;
        Ok(())
    }
}

/// Writes everything with `fault` injected at `at`; records write errors in `observed`.
async fn write_with_fault(
    setup: &mut Setup,
    observed: &mut Observed,
    at: Id,
    fault: impl AsyncFnOnce(&mut Setup) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let mut writes = setup.writes();
    let mut result = writes.until(at).await;
    if result.is_ok() {
        setup.phase.set("injecting the fault");
        let what = fault(setup).await?;
        setup.phase.set(format!("writing after: {what}"));
        observed.injected.push(format!(
            "after map {} record {} of {}x{}: {what}",
            at.map, at.seq, setup.workload.maps, setup.workload.records_per_map,
        ));
        result = writes.all().await;
    }
    observed.written = writes.written();
    observed.maps_done = writes.finished_maps;
    observed.write_error = result.err();
    Ok(())
}

/// Runs one scenario with one replication and judges it. Never panics through; every process
/// it started is gone when it returns.
pub async fn run(run: &Run, scenario: Scenario, replication: u32, sizes: Sizes) -> Outcome {
    let started = Instant::now();
    let name = format!("{}-r{replication}", scenario.name());
    tracing::info!(scenario = %name, "starting");
    let phase = Phase::default();
    let body = {
        let run = run.clone();
        let name = name.clone();
        let phase = phase.clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                sizes.deadline,
                body(&run, &name, scenario, replication, sizes, &phase),
            )
            .await
        })
    };
    let mut outcome = Outcome {
        scenario: scenario.name(),
        replication,
        written: 0,
        read: 0,
        lost: 0,
        duplicated: 0,
        corrupted: 0,
        verdict: Verdict::Fail,
        detail: String::new(),
        seconds: 0.0,
    };
    match body.await {
        Ok(Ok(Ok(observed))) => judge(&mut outcome, observed),
        Ok(Ok(Err(e))) => match e.downcast_ref::<Skipped>() {
            Some(Skipped(reason)) => {
                outcome.verdict = Verdict::Skipped;
                outcome.detail = reason.clone();
            }
            None => outcome.detail = format!("harness error: {e:#}"),
        },
        Ok(Err(_)) => {
            outcome.detail = format!(
                "did not finish within {:?}; hung while {}",
                sizes.deadline,
                phase.get()
            )
        }
        Err(e) => outcome.detail = format!("panicked: {e}"),
    }
    outcome.seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    tracing::info!(scenario = %name, verdict = outcome.verdict.label(), detail = %outcome.detail, "done");
    outcome
}

fn judge(outcome: &mut Outcome, observed: Observed) {
    let tally = &observed.tally;
    outcome.written = observed.written;
    outcome.read = tally.records;
    outcome.duplicated = tally.duplicated();
    outcome.corrupted = tally.corrupted;
    let mut detail = observed.injected.join("; ");
    let mut note = |text: String| {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&text);
    };
    for extra in &tally.notes {
        note(extra.clone());
    }
    if let Some(why) = &observed.not_injected {
        note(format!("fault not injected: {why}"));
    }
    if let Some(e) = &observed.write_error {
        note(format!("write failed: {e}"));
        outcome.verdict = Verdict::Fail;
        outcome.lost = outcome.written.saturating_sub(tally.counts.len() as u64);
        outcome.detail = detail;
        return;
    }
    match &observed.read_error {
        None => {
            outcome.lost = tally.lost(observed.maps_done, observed.records_per_map);
            let clean = outcome.lost == 0 && outcome.duplicated == 0 && outcome.corrupted == 0;
            outcome.verdict = if clean && observed.not_injected.is_none() {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            if !clean {
                note("records lost, repeated or changed without an error".into());
            }
        }
        Some(e) => {
            // The reader stopped: what it did not return is not "lost" silently.
            outcome.lost = outcome.written.saturating_sub(tally.counts.len() as u64);
            let wrong = outcome.duplicated > 0 || outcome.corrupted > 0;
            outcome.verdict = if outcome.replication == 1 && e.is_data_loss() && !wrong {
                Verdict::LossReported
            } else {
                Verdict::Fail
            };
            note(format!("reader error: {e}"));
        }
    }
    outcome.detail = detail;
}

async fn body(
    run: &Run,
    name: &str,
    scenario: Scenario,
    replication: u32,
    sizes: Sizes,
    phase: &Phase,
) -> anyhow::Result<Observed> {
    let workers = vec![WorkerSpec::default(); 4];
    let mut observed = Observed {
        records_per_map: sizes.records_per_map,
        ..Observed::default()
    };
    match scenario {
        Scenario::KillWhilePushing => {
            let mut setup =
                Setup::start(run, name, &workers, replication, sizes.workload(), phase).await?;
            let victim = setup.primary_of(0)?;
            let primaries = setup.primaries_on(victim);
            write_with_fault(&mut setup, &mut observed, sizes.mid_write(), async |s| {
                s.cluster.kill(victim).await;
                Ok(format!(
                    "SIGKILL {} (primary of {primaries} partitions)",
                    s.id(victim)
                ))
            })
            .await?;
            if observed.write_error.is_none() {
                setup.read_all(&mut observed).await;
            }
            setup.cluster.shutdown().await;
        }
        Scenario::KillWhileReading => {
            let mut setup =
                Setup::start(run, name, &workers, replication, sizes.workload(), phase).await?;
            let mut writes = setup.writes();
            observed.write_error = writes.all().await.err();
            observed.written = writes.written();
            observed.maps_done = writes.finished_maps;
            if observed.write_error.is_none() {
                phase.set("reading");
                let mut reads = Reads::open(&setup.client, &setup.key, &setup.workload).await?;
                // A third of the way through (blocks are batches of at most `batch_size` raw
                // bytes): kill the primary of the partition being read.
                let raw = setup.workload.records() * setup.workload.record_len as u64;
                let at = (raw / BATCH_SIZE as u64 / 3).max(1);
                let result = match reads.blocks(at).await {
                    Ok(true) => {
                        let partition = reads.tally.last_partition.unwrap_or(0);
                        let victim = setup.primary_of(partition)?;
                        setup.cluster.kill(victim).await;
                        phase.set("reading after the kill");
                        observed.injected.push(format!(
                            "SIGKILL {} (primary of partition {partition}, being read) after {at} blocks",
                            setup.id(victim)
                        ));
                        reads.to_end().await
                    }
                    Ok(false) => {
                        observed
                            .injected
                            .push(format!("no fault: the reader ended before {at} blocks"));
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                observed.tally = reads.tally;
                observed.read_error = result.err();
            }
            setup.cluster.shutdown().await;
        }
        Scenario::StopWhilePushing => {
            let setup =
                Setup::start(run, name, &workers, replication, sizes.workload(), phase).await?;
            let victim = setup.primary_of(0)?;
            let stop_for = Duration::from_secs(4);
            let mut writes = setup.writes();
            let mut result = writes.until(sizes.mid_write()).await;
            if result.is_ok() {
                if !setup.cluster.stop(victim) {
                    return Err(anyhow!("SIGSTOP {} failed", setup.id(victim)));
                }
                observed.injected.push(format!(
                    "SIGSTOP {} after map {} record {}, SIGCONT {stop_for:?} later (push timeout 2s)",
                    setup.id(victim),
                    sizes.mid_write().map,
                    sizes.mid_write().seq
                ));
                phase.set("writing while the worker is stopped");
                let cluster = &setup.cluster;
                let (written, _) = tokio::join!(writes.all(), async {
                    tokio::time::sleep(stop_for).await;
                    cluster.resume(victim);
                });
                result = written;
            }
            observed.written = writes.written();
            observed.maps_done = writes.finished_maps;
            observed.write_error = result.err();
            if observed.write_error.is_none() {
                setup.read_all(&mut observed).await;
            }
            setup.cluster.resume(victim);
            setup.cluster.shutdown().await;
        }
        Scenario::Restart => {
            let mut setup =
                Setup::start(run, name, &workers, replication, sizes.workload(), phase).await?;
            let mut writes = setup.writes();
            observed.write_error = writes.all().await.err();
            observed.written = writes.written();
            observed.maps_done = writes.finished_maps;
            if observed.write_error.is_none() {
                setup.committed().await?;
                let victim = setup.primary_of(0)?;
                setup.cluster.restart(victim).await?;
                observed.injected.push(format!(
                    "after the commit: SIGKILL {0} and restart it on its data directories",
                    setup.id(victim)
                ));
                // Then lose the other copy of partition 0, so reading it needs the restarted
                // worker's files.
                if let Some(other) = setup.replica_of(0).filter(|o| *o != victim) {
                    setup.cluster.kill(other).await;
                    observed.injected.push(format!(
                        "SIGKILL {} (the other copy of partition 0)",
                        setup.id(other)
                    ));
                }
                setup.read_all(&mut observed).await;
            }
            setup.cluster.shutdown().await;
        }
        Scenario::Partition => {
            let mut specs = workers.clone();
            specs[0].proxied = true;
            let mut setup =
                Setup::start(run, name, &specs, replication, sizes.workload(), phase).await?;
            let victim = 0;
            let primaries = setup.primaries_on(victim);
            if primaries == 0 {
                return Err(anyhow!("placement gave {} no primary", setup.id(victim)));
            }
            write_with_fault(&mut setup, &mut observed, sizes.mid_write(), async |s| {
                s.cluster.cut(victim)?;
                Ok(format!(
                    "cut {} off the network (push, fetch, master; primary of {primaries} partitions)",
                    s.id(victim)
                ))
            })
            .await?;
            if observed.write_error.is_none() {
                setup.read_all(&mut observed).await;
            }
            setup.cluster.heal(victim);
            setup.cluster.shutdown().await;
        }
        Scenario::Corrupt => {
            let setup =
                Setup::start(run, name, &workers, replication, sizes.workload(), phase).await?;
            let mut writes = setup.writes();
            observed.write_error = writes.all().await.err();
            observed.written = writes.written();
            observed.maps_done = writes.finished_maps;
            if observed.write_error.is_none() {
                setup.committed().await?;
                let victim = setup.primary_of(0)?;
                let file = setup
                    .cluster
                    .data_files(victim, 'p')
                    .into_iter()
                    .find(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
                    .ok_or_else(|| anyhow!("{} has no primary data file", setup.id(victim)))?;
                let at = flip(&file)?;
                observed.injected.push(format!(
                    "flipped 16 bytes at offset {at} of {}'s {}",
                    setup.id(victim),
                    file.strip_prefix(&setup.cluster.dir)
                        .unwrap_or(&file)
                        .display()
                ));
                setup.read_all(&mut observed).await;
            }
            setup.cluster.shutdown().await;
        }
        Scenario::DiskFull => {
            // Every data dir is a tmpfs, so placement (weighted by free space) still gives the
            // small one partitions; then most records go to the partitions it holds.
            let mut specs = workers.clone();
            for (i, spec) in specs.iter_mut().enumerate() {
                spec.tmpfs = Some(if i == 0 { "8m" } else { "32m" }.into());
            }
            let mut workload = sizes.workload();
            workload.maps = 8;
            workload.partitions = 16;
            workload.record_len = 1000;
            workload.records_per_map = 2000;
            observed.records_per_map = workload.records_per_map;
            let mut setup = Setup::start(run, name, &specs, replication, workload, phase).await?;
            let victim = 0;
            let hot: Vec<u32> = (0..setup.workload.partitions)
                .filter(|p| {
                    setup.primary_of(*p).ok() == Some(victim)
                        || setup.replica_of(*p) == Some(victim)
                })
                .collect();
            if hot.is_empty() {
                return Err(anyhow!(
                    "placement gave {} (8m tmpfs) no partition to fill",
                    setup.id(victim)
                ));
            }
            let hot_bytes = setup.workload.records() * setup.workload.record_len as u64 * 4 / 5;
            setup.workload.hot = hot.clone();
            observed.injected.push(format!(
                "{} on an 8m tmpfs holds partitions {hot:?}, which get ~{} MiB",
                setup.id(victim),
                hot_bytes >> 20
            ));
            let mut writes = setup.writes();
            observed.write_error = writes.all().await.err();
            observed.written = writes.written();
            observed.maps_done = writes.finished_maps;
            if observed.write_error.is_none() {
                setup.read_all(&mut observed).await;
            }
            let full = std::fs::read_to_string(
                setup.cluster.dir.join(format!("{}.log", setup.id(victim))),
            )
            .map(|log| log.contains("No space left") || log.contains("ENOSPC"))
            .unwrap_or(false);
            if full {
                observed
                    .injected
                    .push(format!("{} logged ENOSPC", setup.id(victim)));
            } else {
                observed.not_injected = Some(format!("{} never logged ENOSPC", setup.id(victim)));
            }
            setup.cluster.shutdown().await;
        }
    }
    Ok(observed)
}

/// Flips 16 bytes in the middle of `file`; returns the offset.
fn flip(file: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let len = f.metadata()?.len();
    let at = (len / 2).saturating_sub(8);
    let mut bytes = [0u8; 16];
    f.seek(SeekFrom::Start(at))?;
    let n = f.read(&mut bytes)?;
    for b in &mut bytes[..n] {
        *b ^= 0xA5;
    }
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&bytes[..n])?;
    f.sync_all()?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Id;

    fn outcome(replication: u32) -> Outcome {
        Outcome {
            scenario: "test",
            replication,
            written: 0,
            read: 0,
            lost: 0,
            duplicated: 0,
            corrupted: 0,
            verdict: Verdict::Fail,
            detail: String::new(),
            seconds: 0.0,
        }
    }

    /// Two maps of three records; `read` lists the (map, seq) ids returned.
    fn observed(read: &[(u32, u32)], error: Option<ClientError>) -> Observed {
        let mut tally = crate::workload::Tally::default();
        for (map, seq) in read {
            *tally
                .counts
                .entry(Id {
                    map: *map,
                    seq: *seq,
                })
                .or_insert(0) += 1;
            tally.records += 1;
        }
        Observed {
            written: 6,
            maps_done: 2,
            records_per_map: 3,
            tally,
            read_error: error,
            ..Observed::default()
        }
    }

    fn lost_error() -> ClientError {
        ClientError::DataLost {
            shuffle: "s".into(),
            partition: 0,
            reason: "gone".into(),
        }
    }

    const ALL: [(u32, u32); 6] = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)];

    #[test]
    fn exactly_once_passes_and_short_or_repeated_data_fails() {
        let mut o = outcome(2);
        judge(&mut o, observed(&ALL, None));
        assert_eq!((o.verdict, o.lost, o.read), (Verdict::Pass, 0, 6));

        let mut o = outcome(2);
        judge(&mut o, observed(&ALL[1..], None));
        assert_eq!((o.verdict, o.lost), (Verdict::Fail, 1));

        let mut o = outcome(1);
        judge(&mut o, observed(&[ALL, [(1, 2); 6]].concat(), None));
        assert_eq!((o.verdict, o.duplicated), (Verdict::Fail, 1));
    }

    #[test]
    fn only_replication_one_may_pass_with_a_data_loss_error() {
        let mut o = outcome(1);
        judge(&mut o, observed(&ALL[..2], Some(lost_error())));
        assert_eq!((o.verdict, o.lost), (Verdict::LossReported, 4));

        let mut o = outcome(2);
        judge(&mut o, observed(&ALL[..2], Some(lost_error())));
        assert_eq!(o.verdict, Verdict::Fail);

        let mut o = outcome(1);
        let timeout = ClientError::Timeout("layout".into());
        judge(&mut o, observed(&ALL[..2], Some(timeout)));
        assert_eq!(o.verdict, Verdict::Fail);
    }

    #[test]
    fn a_fault_that_never_happened_fails() {
        let mut o = outcome(2);
        let mut seen = observed(&ALL, None);
        seen.not_injected = Some("the reader ended first".into());
        judge(&mut o, seen);
        assert_eq!(o.verdict, Verdict::Fail);
        assert!(o.detail.contains("not injected"), "{}", o.detail);
    }
}
