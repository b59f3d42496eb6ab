//! Draining: a worker told to go by a deadline (an operator's decommission with `--deadline`,
//! or its own SIGTERM with `shutdown_drain`) makes what it holds outlive it, then exits.
//!
//! 1. It is leaving: no new partitions, and pushes are answered `Unavailable` so writers revive
//!    elsewhere at once (replica forwards too, so a primary's writers move on as well). With a
//!    deadline of [`PLANNED`] or more (a planned drain: `--deadline 1h`) it first keeps serving
//!    reads while its shuffles are still held and more than twice the time a hand-over of
//!    everything would take remains: shuffles that are read and deleted meanwhile need no
//!    hand-over. A shorter deadline (a preemption) hands over at once.
//! 2. It asks the leading master for its drain plan: its copies that no copy of the same epoch
//!    on a live worker that stays stands in for, each with a worker to take it; then the
//!    committed copies another copy does stand in for, each with a worker holding no copy of
//!    its epoch, so their partitions keep their replication. Those go last, only while time is
//!    left, and are never reported lost.
//! 3. It commits those copies on itself (seals them: the last flushes, the commit journal), so
//!    what it hands over is final. A later commit from the master answers the same totals.
//! 4. It sends each copy's data file to its target in pieces (`HandOver` frames, a few copies at
//!    a time); the target writes it, checks the batches add up to the totals and records the
//!    commit. A target that fails is replaced by the next one of the plan.
//! 5. It tells the master which copies moved where (`MoveCopies`): layouts, and the commit if it
//!    is still to come, go there. The copies left when the deadline comes are reported lost at
//!    once, so readers fail fast with `DataLost` and Spark re-runs the stage.
//! 6. It stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::MessageType;
use sluice_protocol::master_channel::{MasterChannel, MasterOptions};
use sluice_protocol::rpc::Credentials;
use sluice_protocol::{pb, ShuffleKey};

use crate::shared::Shared;
use crate::storage::layout::LocationId;

/// Largest piece of a data file in one `HandOver` frame.
const PIECE: u64 = 4 << 20;
/// Copies handed over at once.
const PARALLEL: usize = 4;
/// Time kept back from the deadline to report what moved and what is lost.
const REPORT_RESERVE: Duration = Duration::from_secs(2);
/// A drain with at least this deadline is planned: it waits for readers first.
pub const PLANNED: Duration = Duration::from_secs(300);
/// The hand-over rate a planned drain counts on when it decides how long it may wait (a tenth
/// of what a 2-core machine moves over loopback).
const ASSUMED_RATE: u64 = 20 << 20;
/// Time a planned drain keeps for the hand-over beyond what [`ASSUMED_RATE`] needs.
const HANDOVER_MARGIN: Duration = Duration::from_secs(30);

/// What a drain did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DrainReport {
    /// Copies the plan named (no other copy outlives them).
    pub planned: u64,
    /// Copies a copy on a live worker stands in for.
    pub covered: u64,
    /// Copies the plan named to restore (covered, committed, a worker without a copy of their
    /// epoch can take them), and of those, how many moved: their partitions keep their
    /// replication.
    pub to_restore: u64,
    pub restored: u64,
    /// Copies moved (planned and restored), their bytes, and planned copies reported lost.
    pub moved: u64,
    pub moved_bytes: u64,
    pub lost: u64,
    pub seconds: f64,
    /// Of which handing over (sealing, sending, reporting), after any wait for readers.
    pub handover_seconds: f64,
    pub deadline_seconds: f64,
}

/// Drains within `deadline` (see the module overview), then stops the worker. Runs once: a
/// second call while a drain runs only brings its deadline forward when it is sooner (a
/// SIGTERM during a planned drain), and returns `None`.
pub async fn drain(shared: Arc<Shared>, deadline: Duration, by: &str) -> Option<DrainReport> {
    let until = Instant::now() + deadline;
    {
        let mut current = shared.drain_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = current.as_mut() {
            if until < *current {
                tracing::warn!(
                    by,
                    ?deadline,
                    "a drain under way: its deadline comes sooner now"
                );
                *current = until;
            }
            return None;
        }
        *current = Some(until);
    }
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    shared.decommission(by);
    tracing::warn!(worker = %shared.info.id, by, ?deadline, "draining: handing over what no other copy outlives");
    let report = run(&shared, deadline).await;
    tracing::warn!(
        worker = %shared.info.id,
        moved = report.moved,
        moved_bytes = report.moved_bytes,
        lost = report.lost,
        covered = report.covered,
        restored = report.restored,
        to_restore = report.to_restore,
        seconds = report.seconds,
        handover_seconds = report.handover_seconds,
        "drained; stopping"
    );
    *shared
        .drain_report
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    if let Some(stop) = shared.stop.get() {
        stop.cancel();
    }
    Some(report)
}

/// The leading master, as this worker.
fn masters(shared: &Shared, retry: Duration) -> Option<MasterChannel> {
    let options = MasterOptions {
        connect_timeout: Duration::from_secs(3),
        call_timeout: Duration::from_secs(10),
        retry_timeout: retry,
        tls: shared.tls_client.clone(),
        ..MasterOptions::default()
    };
    let channel = MasterChannel::new(&shared.config.master, options).ok()?;
    if let Some(keyring) = &shared.keyring {
        channel.set_credentials(Some(Credentials::cluster(
            sluice_protocol::auth::Principal::Worker(shared.info.id.clone()),
            keyring,
        )));
    }
    Some(channel)
}

/// One copy to save: its shuffle, location, and the plan's target for it.
#[derive(Debug, Clone)]
struct Copy {
    shuffle: ShuffleKey,
    spec: pb::LocationSpec,
    target: usize,
    /// Another copy stands in for it: moved only to keep the partition's replication, never
    /// reported lost.
    restore: bool,
}

async fn run(shared: &Arc<Shared>, deadline: Duration) -> DrainReport {
    let started = Instant::now();
    let mut report = DrainReport {
        deadline_seconds: deadline.as_secs_f64(),
        ..DrainReport::default()
    };
    if deadline >= PLANNED {
        wait_for_reads(shared).await;
    }
    // Brought forward by a later, shorter drain request (a SIGTERM) while waiting.
    let until = deadline_of(shared).unwrap_or(started + deadline);
    let left = || until.saturating_duration_since(Instant::now());
    let handing = Instant::now();
    let Some(master) = masters(shared, left()) else {
        tracing::error!("draining: invalid master endpoints");
        return report;
    };
    let request = pb::DrainPlanRequest {
        worker_id: shared.info.id.clone(),
    };
    let plan = match master
        .call(request, |mut m, r| async move { m.drain_plan(r).await })
        .await
    {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!(error = %e, "draining: no drain plan from the masters; stopping with what is held");
            report.seconds = started.elapsed().as_secs_f64();
            return report;
        }
    };
    report.covered = plan.covered;
    report.planned = plan.copies.len() as u64;
    report.to_restore = plan.restore.len() as u64;
    let targets = plan.targets;
    // The copies to save, then those that keep partitions at their replication.
    let mut copies: Vec<Copy> = Vec::with_capacity(plan.copies.len() + plan.restore.len());
    // A planned copy without a target (there is nowhere to go) is still planned: it is then
    // reported lost. A copy to restore without one is left alone.
    let planned = plan.copies.into_iter().enumerate().map(|(i, c)| {
        let target = plan.target.get(i).copied().unwrap_or(0);
        ((c, target), false)
    });
    let restore = plan.restore.into_iter().zip(plan.restore_target);
    for ((copy, target), restore) in planned.chain(restore.map(|c| (c, true))) {
        let Ok(shuffle) = ShuffleKey::from_pb(copy.shuffle.as_ref()) else {
            continue;
        };
        copies.push(Copy {
            shuffle,
            spec: pb::LocationSpec {
                partition: copy.partition,
                epoch: copy.epoch,
                role: copy.role,
                replica: None,
            },
            target: target as usize,
            restore,
        });
    }

    // Seal (commit here) every planned copy, a shuffle at a time.
    let mut sealed: HashMap<(ShuffleKey, LocationId), pb::BatchStats> = HashMap::new();
    let mut by_shuffle: HashMap<ShuffleKey, Vec<pb::LocationSpec>> = HashMap::new();
    for copy in &copies {
        by_shuffle
            .entry(copy.shuffle.clone())
            .or_default()
            .push(copy.spec.clone());
    }
    for (shuffle, specs) in by_shuffle {
        for done in shared.store.commit(&shuffle, &specs).await {
            let Some(spec) = done.location else { continue };
            let (Ok(id), Some(stats)) = (LocationId::of_spec(&spec), done.stats) else {
                tracing::warn!(shuffle = %shuffle, partition = spec.partition, error = %done.error, "draining: a copy could not be sealed");
                continue;
            };
            if done.ok {
                sealed.insert((shuffle.clone(), id), stats);
            }
        }
    }

    // Hand over, a few copies at a time, in the plan's order, while time is left.
    let mut moved: Vec<(Copy, usize)> = Vec::new();
    let mut pending = copies
        .iter()
        .cloned()
        .collect::<std::collections::VecDeque<_>>();
    let mut running = tokio::task::JoinSet::new();
    let send_until = until.checked_sub(REPORT_RESERVE).unwrap_or(until);
    loop {
        while running.len() < PARALLEL && Instant::now() < send_until {
            let Some(copy) = pending.pop_front() else {
                break;
            };
            let Some(id) = LocationId::of_spec(&copy.spec).ok() else {
                continue;
            };
            let Some(stats) = sealed.get(&(copy.shuffle.clone(), id)).copied() else {
                continue;
            };
            let (shared, targets) = (shared.clone(), targets.clone());
            running.spawn(async move {
                let outcome = hand_over(&shared, &targets, &copy, id, stats, send_until).await;
                (copy, outcome)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let Ok((copy, outcome)) = joined else {
            continue;
        };
        match outcome {
            Ok((target, bytes)) => {
                report.moved_bytes += bytes;
                shared.metrics.handed_over_bytes.increment(bytes);
                moved.push((copy, target));
            }
            Err(e) => {
                tracing::warn!(shuffle = %copy.shuffle, partition = copy.spec.partition, epoch = copy.spec.epoch, error = %e, "draining: a copy was not handed over");
            }
        }
    }

    // Tell the master where they went, then what is lost.
    // By shuffle and target (none: lost): each copy, and whether it is one to restore.
    type Group = (ShuffleKey, Option<usize>);
    let mut groups: HashMap<Group, Vec<(pb::LocationSpec, bool)>> = HashMap::new();
    let moved_ids: std::collections::HashSet<(ShuffleKey, u32, u32, i32)> = moved
        .iter()
        .map(|(c, _)| {
            (
                c.shuffle.clone(),
                c.spec.partition,
                c.spec.epoch,
                c.spec.role,
            )
        })
        .collect();
    for (copy, target) in &moved {
        groups
            .entry((copy.shuffle.clone(), Some(*target)))
            .or_default()
            .push((copy.spec.clone(), copy.restore));
    }
    for copy in copies.iter().filter(|c| !c.restore) {
        let key = (
            copy.shuffle.clone(),
            copy.spec.partition,
            copy.spec.epoch,
            copy.spec.role,
        );
        if !moved_ids.contains(&key) {
            groups
                .entry((copy.shuffle.clone(), None))
                .or_default()
                .push((copy.spec.clone(), false));
        }
    }
    // Moves first: a copy reported moved is safe even if the losses cannot be reported.
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|((_, target), _)| target.is_none());
    let reporter = masters(shared, left().max(REPORT_RESERVE));
    for ((shuffle, target), specs) in groups {
        let n = specs.len() as u64;
        // Copies to restore: another copy stands in for them whatever happens here.
        let restoring = specs.iter().filter(|(_, restore)| *restore).count() as u64;
        let request = pb::MoveCopiesRequest {
            worker_id: shared.info.id.clone(),
            shuffle: Some(shuffle.to_pb()),
            partition: specs.iter().map(|(s, _)| s.partition).collect(),
            epoch: specs.iter().map(|(s, _)| s.epoch).collect(),
            role: specs.iter().map(|(s, _)| s.role).collect(),
            to: target.and_then(|t| targets.get(t).cloned()),
            reason: format!(
                "worker {} left before handing it over (drain deadline {:?})",
                shared.info.id, deadline
            ),
        };
        let Some(master) = &reporter else { break };
        let reported = master
            .call(request, |mut m, r| async move { m.move_copies(r).await })
            .await;
        match (target, reported) {
            (Some(_), Ok(_)) => {
                report.moved += n;
                report.restored += restoring;
                shared.metrics.drain_copies_moved.increment(n);
            }
            (None, Ok(_)) => {
                report.lost += n;
                shared.metrics.drain_copies_lost.increment(n);
            }
            (Some(_), Err(e)) => {
                // Handed over, but the layouts still point here: lost once this worker goes.
                report.lost += n - restoring;
                shared.metrics.drain_copies_lost.increment(n - restoring);
                tracing::error!(shuffle = %shuffle, copies = n, error = %e, "draining: the master did not take the hand-over");
            }
            (None, Err(e)) => {
                report.lost += n;
                shared.metrics.drain_copies_lost.increment(n);
                tracing::error!(shuffle = %shuffle, copies = n, error = %e, "draining: could not report lost copies");
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.handover_seconds = handing.elapsed().as_secs_f64();
    report
}

/// The drain's deadline now.
fn deadline_of(shared: &Shared) -> Option<Instant> {
    *shared.drain_until.lock().unwrap_or_else(|e| e.into_inner())
}

/// A planned drain: waits while the worker holds shuffles and more than twice what handing them
/// all over would take remains (readers keep reading them here; deleted ones need no hand-over).
async fn wait_for_reads(shared: &Shared) {
    let mut logged = false;
    loop {
        let Some(until) = deadline_of(shared) else {
            return;
        };
        let held: u64 = shared
            .store
            .disks()
            .iter()
            .map(|d| d.usage().used_bytes)
            .sum();
        let handover = Duration::from_secs(held / ASSUMED_RATE) + HANDOVER_MARGIN;
        let left = until.saturating_duration_since(Instant::now());
        if shared.store.shuffle_keys(1).is_empty() || left <= handover * 2 {
            return;
        }
        if !std::mem::replace(&mut logged, true) {
            tracing::info!(
                held_bytes = held,
                ?left,
                "draining: serving reads while shuffles are held; handing over what is left later"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sends one sealed copy to the plan's target for it, or, when that fails, to the next targets
/// in turn. Returns the target that took it and the bytes sent.
async fn hand_over(
    shared: &Shared,
    targets: &[pb::WorkerInfo],
    copy: &Copy,
    id: LocationId,
    stats: pb::BatchStats,
    until: Instant,
) -> Result<(usize, u64), String> {
    let partition = shared
        .store
        .get(&copy.shuffle, id)
        .map_err(|e| e.to_string())?;
    let files = partition.committed_files().map_err(|e| e.to_string())?;
    let mut last_error = "no worker to take it".to_string();
    // With a DFS: upload once (unless it is there already), then any worker takes it by
    // reference; the copy then outlives the worker that serves it too. A failed upload falls
    // back to sending the file, without retries: the deadline is better spent on the peer. A
    // DFS found down is not tried again.
    let on_dfs = match (files.dfs.is_some(), shared.store.dfs()) {
        (true, _) => true,
        (false, Some(dfs)) if dfs.is_up() => {
            match dfs.upload(&copy.shuffle, id, &files, true).await {
                Ok(uploaded) => {
                    shared.metrics.dfs_uploaded_bytes.increment(uploaded);
                    true
                }
                Err(e) => {
                    tracing::warn!(dfs = dfs.url(), shuffle = %copy.shuffle, partition = copy.spec.partition, error = %e, "draining: upload to the DFS failed, handing the file over");
                    last_error = format!("upload to the DFS: {e}");
                    false
                }
            }
        }
        (false, _) => false,
    };
    if on_dfs {
        // Bytes moved: none when only the reference moves.
        let moved = if files.dfs.is_some() {
            0
        } else {
            files.data_len
        };
        for t in target_order(copy, targets.len()) {
            if Instant::now() >= until {
                break;
            }
            match send_reference(shared, &targets[t], copy, files.data_len, stats, until).await {
                Ok(()) => return Ok((t, moved)),
                Err(e) => {
                    tracing::warn!(target = %targets[t].id, shuffle = %copy.shuffle, partition = copy.spec.partition, error = %e, "draining: a worker did not take a copy on the DFS");
                    last_error = e;
                }
            }
        }
        if files.dfs.is_some() {
            // No local file to send instead.
            return Err(last_error);
        }
    }
    for t in target_order(copy, targets.len()) {
        if Instant::now() >= until {
            return Err(format!("deadline reached; last error: {last_error}"));
        }
        match send_file(shared, &targets[t], copy, &files, stats, until).await {
            Ok(bytes) => return Ok((t, bytes)),
            Err(e) => {
                tracing::warn!(target = %targets[t].id, shuffle = %copy.shuffle, partition = copy.spec.partition, error = %e, "draining: hand-over failed, trying another worker");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

/// The targets to try for `copy`, of `n`: the plan's, then the next ones in turn.
fn target_order(copy: &Copy, n: usize) -> impl Iterator<Item = usize> + '_ {
    (0..n).map(move |step| (copy.target + step) % n)
}

/// Tells `target` to serve a copy uploaded to the DFS.
async fn send_reference(
    shared: &Shared,
    target: &pb::WorkerInfo,
    copy: &Copy,
    data_len: u64,
    stats: pb::BatchStats,
    until: Instant,
) -> Result<(), String> {
    let header = pb::HandOverHeader {
        shuffle: Some(copy.shuffle.to_pb()),
        location: Some(copy.spec.clone()),
        offset: 0,
        last: true,
        stats: Some(stats),
        on_dfs: true,
        data_length: data_len,
    };
    let frame = OutFrame::new(MessageType::HandOver, 0, &header);
    let wait = until
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(30));
    shared
        .peers
        .call(&target.push_addr(), frame, MessageType::Ack, wait)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Sends a committed data file to `target` in pieces of [`PIECE`] bytes.
async fn send_file(
    shared: &Shared,
    target: &pb::WorkerInfo,
    copy: &Copy,
    files: &crate::storage::partition::CommittedFiles,
    stats: pb::BatchStats,
    until: Instant,
) -> Result<u64, String> {
    let addr = target.push_addr();
    let len = files.data_len;
    let mut offset = 0u64;
    loop {
        let take = PIECE.min(len - offset);
        let piece = match (&files.files, take) {
            (Some(f), n) if n > 0 => {
                let path = f.data.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    use std::os::unix::fs::FileExt;
                    let file = std::fs::File::open(&path)?;
                    let mut buf = vec![0u8; n as usize];
                    file.read_exact_at(&mut buf, offset)?;
                    Ok(buf)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading {}: {e}", copy.shuffle))?
            }
            _ => Vec::new(),
        };
        let last = offset + take == len;
        let header = pb::HandOverHeader {
            shuffle: Some(copy.shuffle.to_pb()),
            location: Some(copy.spec.clone()),
            offset,
            last,
            stats: last.then_some(stats),
            on_dfs: false,
            data_length: len,
        };
        let frame = OutFrame::new(MessageType::HandOver, 0, &header).with_body(vec![piece.into()]);
        let wait = until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(30));
        shared
            .peers
            .call(&addr, frame, MessageType::Ack, wait)
            .await
            .map_err(|e| e.to_string())?;
        offset += take;
        if last {
            return Ok(len);
        }
    }
}
