//! The fault scenarios: processes SIGKILLed, stopped and restarted, a worker cut off the
//! network, a flipped byte on disk, a full disk. Each writes and reads the verified workload
//! through the steps of [`crate::setup`] and injects its fault at a fixed point.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;

use crate::cluster::WorkerSpec;
use crate::records::Id;
use crate::setup::{four_workers, write_with_faults, Ctx, Observed, Setup, BATCH_SIZE};
use crate::workload::{Reads, Shape, Workload};

/// A worker SIGKILLed half-way through the writes: the primary of partition 0.
pub(crate) async fn kill_while_pushing(ctx: &Ctx) -> anyhow::Result<Observed> {
    let mut setup = Setup::start(ctx, &four_workers(), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let victim = setup.primary_of(0)?;
    let primaries = setup.primaries_on(victim);
    let at = [ctx.sizes.mid_write()];
    write_with_faults(&mut setup, &mut observed, &at, async move |s, _| {
        s.cluster.kill(victim).await;
        Ok(format!(
            "SIGKILL {} (primary of {primaries} partitions)",
            s.id(victim)
        ))
    })
    .await?;
    setup.read_if_written(&mut observed).await;
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// The primary of the partition being read SIGKILLed a third of the way through the reads.
pub(crate) async fn kill_while_reading(ctx: &Ctx) -> anyhow::Result<Observed> {
    let mut setup = Setup::start(ctx, &four_workers(), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    setup.write_all(&mut observed).await;
    if observed.write_error.is_none() {
        ctx.phase.set("reading");
        let mut reads = Reads::open(&setup.client, &setup.key, &setup.workload).await?;
        // A third of the way through (blocks are batches of at most `batch_size` raw bytes):
        // kill the primary of the partition being read.
        let raw = setup.workload.records() * setup.workload.record_len as u64;
        let at = (raw / BATCH_SIZE as u64 / 3).max(1);
        let result = match reads.blocks(at).await {
            Ok(true) => {
                let partition = reads.tally.last_partition.unwrap_or(0);
                let victim = setup.primary_of(partition)?;
                setup.cluster.kill(victim).await;
                ctx.phase.set("reading after the kill");
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
    Ok(observed)
}

/// The primary of partition 0 SIGSTOPped half-way through the writes for twice the push
/// timeout, then SIGCONTed.
pub(crate) async fn stop_while_pushing(ctx: &Ctx) -> anyhow::Result<Observed> {
    let setup = Setup::start(ctx, &four_workers(), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let victim = setup.primary_of(0)?;
    let stop_for = Duration::from_secs(4);
    let mid = ctx.sizes.mid_write();
    let mut writes = setup.writes();
    let mut result = writes.until(mid).await;
    if result.is_ok() {
        if !setup.cluster.stop(victim) {
            return Err(anyhow!("SIGSTOP {} failed", setup.id(victim)));
        }
        observed.injected.push(format!(
            "SIGSTOP {} after map {} record {}, SIGCONT {stop_for:?} later (push timeout 2s)",
            setup.id(victim),
            mid.map,
            mid.seq
        ));
        ctx.phase.set("writing while the worker is stopped");
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
    setup.read_if_written(&mut observed).await;
    setup.cluster.resume(victim);
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// After the commit: the primary of partition 0 restarted on its data directories, then the
/// other copy of partition 0 killed, so the read needs the restarted worker's files.
pub(crate) async fn restart(ctx: &Ctx) -> anyhow::Result<Observed> {
    let mut setup = Setup::start(ctx, &four_workers(), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    setup.write_all(&mut observed).await;
    if observed.write_error.is_none() {
        setup.committed().await?;
        let victim = setup.primary_of(0)?;
        setup.cluster.restart(victim).await?;
        observed.injected.push(format!(
            "after the commit: SIGKILL {0} and restart it on its data directories",
            setup.id(victim)
        ));
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
    Ok(observed)
}

/// A rolling restart while the maps push: every worker in turn SIGKILLed and started again on
/// its data directories (same id; new ports, which the master points layouts at), the next one
/// only once the restarted one is registered again. With both copies of an epoch restarted,
/// only a worker that keeps its flushed, uncommitted files can serve them.
pub(crate) async fn rolling_restart(ctx: &Ctx) -> anyhow::Result<Observed> {
    let mut setup = Setup::start(ctx, &four_workers(), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let workers = setup.cluster.workers.len();
    // Evenly through the writes: after 1/(n+1), 2/(n+1), ... of the records.
    let points: Vec<Id> = (1..=workers)
        .map(|k| setup.workload.at(k as f64 / (workers + 1) as f64))
        .collect();
    write_with_faults(&mut setup, &mut observed, &points, async |s, k| {
        let before = s.cluster.workers[k].push.clone();
        s.cluster.restart(k).await?;
        Ok(format!(
            "SIGKILL {} and restart it on its data directories (push {before} -> {}, registered)",
            s.id(k),
            s.cluster.workers[k].push
        ))
    })
    .await?;
    setup.read_if_written(&mut observed).await;
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// A worker holding primaries cut off the network (push, fetch and master connections)
/// half-way through the writes.
pub(crate) async fn partition(ctx: &Ctx) -> anyhow::Result<Observed> {
    let mut specs = four_workers();
    specs[0].proxied = true;
    let mut setup = Setup::start(ctx, &specs, ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let victim = 0;
    let primaries = setup.primaries_on(victim);
    if primaries == 0 {
        return Err(anyhow!("placement gave {} no primary", setup.id(victim)));
    }
    let at = [ctx.sizes.mid_write()];
    write_with_faults(&mut setup, &mut observed, &at, async move |s, _| {
        s.cluster.cut(victim)?;
        Ok(format!(
            "cut {} off the network (push, fetch, master; primary of {primaries} partitions)",
            s.id(victim)
        ))
    })
    .await?;
    setup.read_if_written(&mut observed).await;
    setup.cluster.heal(victim);
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// After the commit: 16 bytes flipped in a primary data file of partition 0's worker.
pub(crate) async fn corrupt(ctx: &Ctx) -> anyhow::Result<Observed> {
    let setup = Setup::start(ctx, &four_workers(), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    setup.write_all(&mut observed).await;
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
    Ok(observed)
}

/// A worker on a small tmpfs whose partitions take most of the records, so its disk fills up.
pub(crate) async fn disk_full(ctx: &Ctx) -> anyhow::Result<Observed> {
    // Every data dir is a tmpfs, so placement (weighted by free space) still gives the small
    // one partitions; then most records go to the partitions it holds.
    let specs: Vec<WorkerSpec> = (0..4)
        .map(|i| WorkerSpec {
            tmpfs: Some(if i == 0 { "8m" } else { "32m" }.into()),
            ..WorkerSpec::default()
        })
        .collect();
    let workload = Workload {
        maps: 8,
        partitions: 16,
        record_len: 1000,
        records_per_map: 2000,
        shape: Shape::Even,
    };
    let mut setup = Setup::start(ctx, &specs, workload).await?;
    let mut observed = setup.observed();
    let victim = 0;
    let hot: Vec<u32> = (0..setup.workload.partitions)
        .filter(|p| {
            setup.primary_of(*p).ok() == Some(victim) || setup.replica_of(*p) == Some(victim)
        })
        .collect();
    if hot.is_empty() {
        return Err(anyhow!(
            "placement gave {} (8m tmpfs) no partition to fill",
            setup.id(victim)
        ));
    }
    let hot_bytes = setup.workload.records() * setup.workload.record_len as u64 * 4 / 5;
    setup.workload.shape = Shape::Hot(hot.clone());
    observed.injected.push(format!(
        "{} on an 8m tmpfs holds partitions {hot:?}, which get ~{} MiB",
        setup.id(victim),
        hot_bytes >> 20
    ));
    setup.write_all(&mut observed).await;
    setup.read_if_written(&mut observed).await;
    let full = std::fs::read_to_string(setup.cluster.dir.join(format!("{}.log", setup.id(victim))))
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
