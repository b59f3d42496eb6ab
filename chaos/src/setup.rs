//! The steps every scenario is made of: start a cluster and register a shuffle
//! ([`Setup::start`]), write the workload, with faults injected at fixed points
//! ([`write_with_faults`]) or without ([`Setup::write_all`]), and read everything back
//! ([`Setup::read_all`]) into an [`Observed`], which [`crate::scenario`] judges.

use anyhow::{anyhow, Context};
use sluice_client::{ClientConfig, ClientError, ShuffleHandle, SluiceClient};
use sluice_protocol::ShuffleKey;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, Run, WorkerSpec};
use crate::memory::MemoryFigures;
use crate::records::Id;
use crate::scenario::Sizes;
use crate::workload::{Reads, Workload, Writes};

/// Raw bytes per batch: small, so there are many pushes and chunks to interrupt.
pub(crate) const BATCH_SIZE: usize = 32 * 1024;

/// What a scenario is doing now, so a scenario that runs out of time says where it hung.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phase(Arc<std::sync::Mutex<String>>);

impl Phase {
    pub(crate) fn set(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(phase = %what, "scenario phase");
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }

    pub(crate) fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a scenario function is given.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub run: Run,
    /// Its directory under the run directory: `<scenario>-r<replication>`.
    pub name: String,
    pub replication: u32,
    pub sizes: Sizes,
    pub phase: Phase,
}

/// What a scenario function observed; [`crate::scenario::run`] judges it.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub written: u64,
    pub maps_done: u32,
    pub records_per_map: u32,
    pub tally: crate::workload::Tally,
    pub write_error: Option<ClientError>,
    pub read_error: Option<ClientError>,
    pub injected: Vec<String>,
    /// Why the fault did not happen (the scenario then fails: nothing was verified).
    pub not_injected: Option<String>,
    /// What failed besides the data (memory over its bound, a push never answered): the
    /// scenario fails whatever the reader returned.
    pub failures: Vec<String>,
    pub memory: Option<MemoryFigures>,
    /// The master scenarios: from the fault to the first write a master accepted.
    pub failover: Option<Duration>,
    /// The degraded scenarios: the sick run against the clean one.
    pub degraded: Option<crate::degraded::DegradedFigures>,
}

/// Four plain workers: the cluster of the fault scenarios.
pub(crate) fn four_workers() -> Vec<WorkerSpec> {
    vec![WorkerSpec::default(); 4]
}

/// A started cluster with a registered shuffle.
pub(crate) struct Setup {
    pub cluster: Cluster,
    pub client: SluiceClient,
    pub key: ShuffleKey,
    pub handle: Arc<ShuffleHandle>,
    pub workload: Workload,
    pub phase: Phase,
}

impl Setup {
    /// Starts the cluster of `specs` and registers the shuffle of `workload` with the
    /// scenarios' client settings.
    pub(crate) async fn start(
        ctx: &Ctx,
        specs: &[WorkerSpec],
        workload: Workload,
    ) -> anyhow::Result<Setup> {
        Setup::start_with(ctx, specs, workload, |_| {}).await
    }

    /// Like [`Setup::start`], with the client settings changed by `tune`.
    pub(crate) async fn start_with(
        ctx: &Ctx,
        specs: &[WorkerSpec],
        workload: Workload,
        tune: impl FnOnce(&mut ClientConfig),
    ) -> anyhow::Result<Setup> {
        Setup::start_masters(ctx, 1, specs, workload, tune).await
    }

    /// Like [`Setup::start_with`], with `masters` masters (a Raft group when more than one);
    /// the client and the workers are given them all.
    pub(crate) async fn start_masters(
        ctx: &Ctx,
        masters: usize,
        specs: &[WorkerSpec],
        workload: Workload,
        tune: impl FnOnce(&mut ClientConfig),
    ) -> anyhow::Result<Setup> {
        ctx.phase.set("starting the cluster");
        let cluster = Cluster::start_with_masters(&ctx.run, &ctx.name, masters, specs).await?;
        let mut config = ctx.run.client_config(&cluster.master_addr, ctx.replication);
        tune(&mut config);
        let client = SluiceClient::new(config)?;
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
            phase: ctx.phase.clone(),
        })
    }

    /// An empty observation of this setup's workload.
    pub(crate) fn observed(&self) -> Observed {
        Observed {
            records_per_map: self.workload.records_per_map,
            ..Observed::default()
        }
    }

    /// A writer of the whole workload; its progress is the phase "writing".
    pub(crate) fn writes(&self) -> Writes {
        self.phase.set("writing");
        Writes::new(
            self.client.clone(),
            self.handle.clone(),
            self.workload.clone(),
        )
    }

    /// Writes the whole workload with no fault.
    pub(crate) async fn write_all(&self, observed: &mut Observed) {
        let mut writes = self.writes();
        observed.write_error = writes.all().await.err();
        observed.written = writes.written();
        observed.maps_done = writes.finished_maps;
    }

    /// The cluster index of the worker the layout names at `index` in `locations.workers`.
    pub(crate) fn worker_at(&self, index: u32) -> anyhow::Result<usize> {
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
    pub(crate) fn primary_of(&self, p: u32) -> anyhow::Result<usize> {
        self.worker_at(self.handle.locations.primary_worker[p as usize])
    }

    /// The worker holding the registered replica of partition `p`, if any.
    pub(crate) fn replica_of(&self, p: u32) -> Option<usize> {
        let at = *self.handle.locations.replica_worker.get(p as usize)?;
        self.worker_at(at).ok()
    }

    /// Partitions whose registered primary is worker `i`.
    pub(crate) fn primaries_on(&self, i: usize) -> usize {
        (0..self.workload.partitions)
            .filter(|p| self.primary_of(*p).ok() == Some(i))
            .count()
    }

    pub(crate) fn id(&self, i: usize) -> String {
        self.cluster.workers[i].id.clone()
    }

    /// Reads everything into `observed`.
    pub(crate) async fn read_all(&self, observed: &mut Observed) {
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

    /// Reads everything unless the write failed (then there is nothing to judge but that).
    pub(crate) async fn read_if_written(&self, observed: &mut Observed) {
        if observed.write_error.is_none() {
            self.read_all(observed).await;
        }
    }

    /// Waits until the shuffle is committed (a reader's open waits for the layout).
    pub(crate) async fn committed(&self) -> anyhow::Result<()> {
        self.phase.set("waiting for the commit");
        Reads::open(&self.client, &self.key, &self.workload)
            .await
            .context("waiting for the commit")?;
        Ok(())
    }
}

/// Writes everything, calling `fault(setup, k)` once the writes reach `points[k]` (in order);
/// records what was injected and the write's outcome in `observed`.
pub(crate) async fn write_with_faults(
    setup: &mut Setup,
    observed: &mut Observed,
    points: &[Id],
    mut fault: impl AsyncFnMut(&mut Setup, usize) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let mut writes = setup.writes();
    let mut result = Ok(());
    for (k, at) in points.iter().enumerate() {
        result = writes.until(*at).await;
        if result.is_err() {
            break;
        }
        setup.phase.set("injecting the fault");
        let what = fault(setup, k).await?;
        setup.phase.set(format!("writing after: {what}"));
        observed.injected.push(format!(
            "after map {} record {} of {}x{}: {what}",
            at.map, at.seq, setup.workload.maps, setup.workload.records_per_map,
        ));
    }
    if result.is_ok() {
        result = writes.all().await;
    }
    observed.written = writes.written();
    observed.maps_done = writes.finished_maps;
    observed.write_error = result.err();
    Ok(())
}
