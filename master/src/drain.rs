//! Draining a worker that is told to go: which of its copies no other copy will outlive, who
//! takes each, and the layouts re-pointed (or the copies reported lost) as the worker reports.
//!
//! The worker drives its drain (`sluice_worker::drain`); the master answers two calls:
//! - `DrainPlan`: marks the worker as leaving and lists its copies that have no copy of the same
//!   epoch on a live worker that stays, each with a worker to hand it to; then its committed
//!   copies that do, each with a worker holding no copy of the epoch, to restore the
//!   partition's replication;
//! - `MoveCopies`: records (through the log) that copies now live on another worker, or that
//!   they are lost. It never runs beside the shuffle's commit: both take the shuffle's
//!   `committing` mark, so a commit sees every copy where it is.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::{pb, ShuffleKey};

use crate::core::Core;
use crate::error::{MasterError, MasterResult};
use crate::state::{slow_worker_ids, CommitState, WorkerEntry};

use pb::master_command::Command as Cmd;

/// Marks `worker` as leaving and plans what it must hand over.
pub(crate) fn plan(core: &Core, worker: &str) -> MasterResult<pb::DrainPlanResponse> {
    let mut state = core.lock();
    let entry = state
        .workers
        .get_mut(worker)
        .ok_or_else(|| MasterError::NotFound(format!("unknown worker {worker}")))?;
    let started_leaving = !entry.decommissioning();
    entry.decommission_requested = true;
    entry.drain_deadline = None;
    if started_leaving {
        core.events.worker(
            crate::events::Kind::WorkerDecommissioning,
            worker,
            format!("worker {worker} drains: handing over what it holds"),
        );
    }
    let now = Instant::now();
    // Workers that stay: live, fresh, not leaving, with a healthy disk; slow ones only when
    // there is no other.
    let staying: Vec<&WorkerEntry> = state
        .workers
        .values()
        .filter(|w| w.info.id != worker && w.accepts_partitions() && w.is_fresh(now))
        .collect();
    let slow = slow_worker_ids(&staying);
    let mut targets: Vec<&WorkerEntry> = staying
        .iter()
        .copied()
        .filter(|w| !slow.contains(w.info.id.as_str()))
        .collect();
    if targets.is_empty() {
        targets = staying.clone();
    }
    targets.sort_by_key(|w| (w.active_partitions, w.info.id.clone()));
    let stays = |id: &str| staying.iter().any(|w| w.info.id == id);

    // (committed first, bytes, copy, worker ids holding the epoch elsewhere)
    let mut todo: Vec<(bool, u64, pb::CopyRef, Vec<String>)> = Vec::new();
    // Committed copies another copy stands in for: (bytes, copy, workers holding the epoch).
    let mut restore: Vec<(u64, pb::CopyRef, Vec<String>)> = Vec::new();
    let mut covered = 0u64;
    for (key, shuffle) in &state.shuffles {
        let Some(mine) = shuffle.workers.iter().position(|w| w.id == worker) else {
            continue;
        };
        let results = match &*shuffle.commit.borrow() {
            CommitState::Waiting => None,
            CommitState::Done(results) => Some(results.clone()),
        };
        for (p, copies) in shuffle.locations.iter().enumerate() {
            for (i, copy) in copies.iter().enumerate() {
                if copy.worker != mine as u32 {
                    continue;
                }
                let result = |j: usize| results.as_ref().and_then(|r| r[p].get(j));
                if results.is_some() && !result(i).is_some_and(|r| r.ok) {
                    // Its commit failed: there is nothing to hand over.
                    continue;
                }
                let others: Vec<String> = copies
                    .iter()
                    .enumerate()
                    .filter(|(j, c)| *j != i && c.epoch == copy.epoch)
                    .filter(|(j, _)| results.is_none() || result(*j).is_some_and(|r| r.ok))
                    .map(|(_, c)| shuffle.workers[c.worker as usize].id.clone())
                    .collect();
                let bytes = result(i).and_then(|r| r.stats).map_or(0, |s| s.bytes);
                let copy_ref = pb::CopyRef {
                    shuffle: Some(key.to_pb()),
                    partition: p as u32,
                    epoch: copy.epoch,
                    role: copy.role as i32,
                };
                if others.iter().any(|id| stays(id)) {
                    covered += 1;
                    if results.is_some() {
                        restore.push((bytes, copy_ref, others));
                    }
                    continue;
                }
                todo.push((results.is_some(), bytes, copy_ref, others));
            }
        }
    }
    // Committed copies first (readers want them now), smallest first within each: the most
    // copies saved should the deadline cut the drain short.
    todo.sort_by_key(|(committed, bytes, _, _)| (Reverse(*committed), *bytes));
    let mut answer = pb::DrainPlanResponse {
        covered,
        targets: targets.iter().map(|w| w.info.clone()).collect(),
        ..Default::default()
    };
    if targets.is_empty() {
        // Nowhere to go: the worker reports everything lost.
        answer.copies = todo.into_iter().map(|(_, _, c, _)| c).collect();
        return Ok(answer);
    }
    let mut load: Vec<u64> = vec![0; targets.len()];
    let mut least_loaded = |bytes: u64, others: &[String]| {
        let target = (0..targets.len())
            .filter(|&t| !others.contains(&targets[t].info.id))
            .min_by_key(|&t| (load[t], t))?;
        load[target] += bytes.max(1);
        Some(target as u32)
    };
    for (_, bytes, copy, others) in todo {
        answer.copies.push(copy);
        answer
            .target
            .push(least_loaded(bytes, &others).unwrap_or(0));
    }
    // Then the copies that keep partitions at their replication, smallest first; only where a
    // worker without a copy of the epoch can take them.
    restore.sort_by_key(|(bytes, _, _)| *bytes);
    for (bytes, copy, others) in restore {
        if let Some(target) = least_loaded(bytes, &others) {
            answer.restore.push(copy);
            answer.restore_target.push(target);
        }
    }
    Ok(answer)
}

/// Holds a shuffle's `committing` mark: a commit does not start while it is held, and it waits
/// for a running commit to end.
struct Mark<'a> {
    core: &'a Core,
    key: ShuffleKey,
}

impl<'a> Mark<'a> {
    /// Waits for a running commit (the caller's deadline bounds the wait).
    async fn take(core: &'a Core, key: &ShuffleKey) -> Mark<'a> {
        loop {
            if core.lock().committing.insert(key.clone()) {
                return Mark {
                    core,
                    key: key.clone(),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        self.core.lock().committing.remove(&self.key);
    }
}

/// Records that the copies of `request` moved to `request.to`, or are lost.
pub(crate) async fn move_copies(
    core: &Arc<Core>,
    request: pb::MoveCopiesRequest,
) -> MasterResult<()> {
    let key = ShuffleKey::from_pb(request.shuffle.as_ref()).map_err(MasterError::InvalidRequest)?;
    let n = request.partition.len();
    if request.epoch.len() != n || request.role.len() != n {
        return Err(MasterError::InvalidRequest(
            "copy lists of different lengths".into(),
        ));
    }
    if let Some(to) = &request.to {
        let known = core
            .lock()
            .workers
            .get(&to.id)
            .is_some_and(|w| w.alive && w.same_address(to));
        if !known || to.id == request.worker_id {
            return Err(MasterError::InvalidRequest(format!(
                "worker {} is not a live worker at {}",
                to.id,
                to.push_addr()
            )));
        }
    }
    {
        let mark = Mark::take(core, &key).await;
        let command = Cmd::CopiesMoved(pb::CopiesMoved {
            shuffle: Some(key.to_pb()),
            from: request.worker_id.clone(),
            partition: request.partition,
            epoch: request.epoch,
            role: request.role,
            to: request.to.clone(),
            reason: request.reason.clone(),
        });
        let reply = core.propose(crate::state::command(command)).await?;
        drop(mark);
        if !reply.error.is_empty() {
            return Err(MasterError::NotFound(reply.error));
        }
    }
    match &request.to {
        Some(to) => {
            tracing::info!(shuffle = %key, from = %request.worker_id, to = %to.id, copies = n, "copies handed over");
            core.events.worker(
                crate::events::Kind::HandedOver,
                &request.worker_id,
                format!(
                    "{n} copies of shuffle {key} handed over from worker {} to {}",
                    request.worker_id, to.id
                ),
            );
        }
        None => {
            tracing::warn!(shuffle = %key, worker = %request.worker_id, copies = n, reason = %request.reason, "copies lost with a leaving worker");
            core.events.worker(
                crate::events::Kind::CommitFailed,
                &request.worker_id,
                format!(
                    "{n} copies of shuffle {key} lost with worker {}: {}",
                    request.worker_id, request.reason
                ),
            );
        }
    }
    // A map that ended while the mark was held found the commit taken: start it now.
    let complete = core
        .lock()
        .shuffles
        .get(&key)
        .is_some_and(|entry| entry.complete());
    if complete {
        crate::commit::start(core, key);
    }
    Ok(())
}
