//! Commit coordination: once every map of a shuffle has ended, every worker holding one of its
//! copies flushes and seals them and reports what it holds; readers wait for the result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::pb;
use sluice_protocol::ShuffleKey;

use crate::core::Core;
use crate::error::MasterError;
use crate::state::{self, CommitState};

use pb::master_command::Command as Cmd;

/// Resolves once the master considers `worker` lost (or forgets it). A worker this master has
/// not heard from since it started (it restarted, or just took the lead) is given
/// `worker_timeout` from the start to register before it counts as lost: its commit is sent
/// meanwhile, to the address the shuffle holds.
async fn lost(core: &Core, worker: &str) {
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        poll.tick().await;
        let alive = match core.lock().workers.get(worker) {
            Some(known) => known.alive,
            None => core.started.elapsed() < core.config.worker_timeout,
        };
        if !alive {
            return;
        }
    }
}

/// Commits `specs` on `worker`, a frame of at most `max_locations_per_frame` locations at a
/// time. Returns what the worker answered and, when it stopped answering (an error, or it was
/// declared lost), why.
async fn commit_on(
    core: &Core,
    key: &ShuffleKey,
    worker: &pb::WorkerInfo,
    specs: Vec<pb::LocationSpec>,
) -> (Vec<pb::CommittedSpec>, Option<MasterError>) {
    let mut committed = Vec::with_capacity(specs.len());
    for page in core.pages(specs) {
        // A worker declared lost while its commit is pending will not answer: stop waiting.
        let answer = tokio::select! {
            answer = core.commit_page(worker, key, page) => answer,
            _ = lost(core, &worker.id) => Err(MasterError::WorkerLost(worker.id.clone())),
        };
        match answer {
            Ok(answer) => committed.extend(answer.locations),
            Err(e) => return (committed, Some(e)),
        }
    }
    (committed, None)
}

/// Starts the commit of `key` unless this master is running it already, or it is committed
/// (or gone).
pub(crate) fn start(core: &Arc<Core>, key: ShuffleKey) {
    {
        let mut state = core.lock();
        let waiting = state
            .shuffles
            .get(&key)
            .is_some_and(|entry| matches!(*entry.commit.borrow(), CommitState::Waiting));
        if !waiting || !state.committing.insert(key.clone()) {
            return;
        }
    }
    let core = core.clone();
    tokio::spawn(async move {
        commit_shuffle(&core, &key).await;
        core.lock().committing.remove(&key);
    });
}

/// Starts the commit of every shuffle whose maps have all ended and whose results the log does
/// not hold: a new leader finishes what the former one left running (committing again on a
/// worker answers what it committed before).
pub(crate) fn resume(core: &Arc<Core>) {
    let pending: Vec<ShuffleKey> = core
        .lock()
        .shuffles
        .iter()
        .filter(|(_, entry)| {
            entry.complete() && matches!(*entry.commit.borrow(), CommitState::Waiting)
        })
        .map(|(key, _)| key.clone())
        .collect();
    for key in pending {
        tracing::info!(shuffle = %key, "resuming the commit a former leader started");
        start(core, key);
    }
}

/// Has every worker holding the shuffle commit its files, then records the results in the log
/// (readers waiting for the layout wake when it is applied).
async fn commit_shuffle(core: &Arc<Core>, key: &ShuffleKey) {
    let started = Instant::now();
    let (workers, locations, expected) = {
        let state = core.lock();
        let Some(entry) = state.shuffles.get(key) else {
            return;
        };
        // What the winning attempts wrote per partition, to tell a loss from a failed copy.
        let expected: Vec<u64> = (0..entry.shape.num_partitions)
            .map(|p| {
                entry
                    .expected(p)
                    .iter()
                    .map(|map| map.stats.map_or(0, |s| s.bytes))
                    .sum()
            })
            .collect();
        (entry.workers.clone(), entry.locations.clone(), expected)
    };
    let mut by_worker: Vec<Vec<pb::LocationSpec>> = vec![Vec::new(); workers.len()];
    for (partition, copies) in locations.iter().enumerate() {
        for copy in copies {
            by_worker[copy.worker as usize].push(pb::LocationSpec {
                partition: partition as u32,
                epoch: copy.epoch,
                role: copy.role as i32,
                replica: None,
            });
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    for (index, (worker, specs)) in workers.iter().cloned().zip(by_worker).enumerate() {
        if specs.is_empty() {
            continue;
        }
        let (core, key) = (core.clone(), key.clone());
        calls.spawn(async move {
            let answers = commit_on(&core, &key, &worker, specs).await;
            (index as u32, answers)
        });
    }
    // Every copy starts as failed; a worker's answer fills in what it committed.
    let mut results: Vec<Vec<pb::CommittedLocation>> = locations
        .iter()
        .map(|copies| {
            copies
                .iter()
                .map(|copy| pb::CommittedLocation {
                    epoch: copy.epoch,
                    role: copy.role as i32,
                    worker: copy.worker,
                    stats: None,
                    ok: false,
                    error: format!("worker {} did not commit", workers[copy.worker as usize].id),
                })
                .collect()
        })
        .collect();
    while let Some(joined) = calls.join_next().await {
        let Ok((worker, (committed, error))) = joined else {
            continue;
        };
        for spec in committed {
            let Some(location) = spec.location else {
                continue;
            };
            let slot = results
                .get_mut(location.partition as usize)
                .and_then(|copies| {
                    copies.iter_mut().find(|c| {
                        c.worker == worker && c.epoch == location.epoch && c.role == location.role
                    })
                });
            if let Some(slot) = slot {
                slot.ok = spec.ok;
                slot.stats = spec.stats;
                slot.error = spec.error;
            }
        }
        if let Some(e) = error {
            tracing::warn!(shuffle = %key, error = %e, "commit on worker failed");
            let unanswered = results
                .iter_mut()
                .flatten()
                .filter(|c| c.worker == worker && !c.ok && c.stats.is_none());
            for slot in unanswered {
                slot.error = e.to_string();
            }
        }
    }
    let failed = results.iter().flatten().filter(|c| !c.ok).count();
    let lost = crate::metrics::lost_partitions(&results, &expected);
    if lost > 0 {
        tracing::warn!(shuffle = %key, partitions = lost, "commit found partitions short of what their maps wrote");
    }
    let command = state::command(Cmd::ShuffleCommitted(pb::ShuffleCommitted {
        shuffle: Some(key.to_pb()),
        partitions: results
            .into_iter()
            .map(|locations| pb::CommittedPartition { locations })
            .collect(),
    }));
    match core.propose(command).await {
        Ok(_) => {
            core.metrics.committed(started, lost);
            tracing::info!(shuffle = %key, failed_locations = failed, took = ?started.elapsed(), "shuffle committed")
        }
        // The next leader commits it again.
        Err(e) => tracing::warn!(shuffle = %key, error = %e, "commit results not recorded"),
    }
}
