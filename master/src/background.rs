//! The master's background tasks: declaring silent workers lost and expiring silent
//! applications (deleting their data on the workers).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use sluice_protocol::pb;
use tokio_util::sync::CancellationToken;

use crate::commit;
use crate::core::Core;
use crate::state;

use pb::master_command::Command as Cmd;

/// Runs `f` every `period` (the first time at once) until `shutdown`.
pub(crate) fn every(
    period: Duration,
    shutdown: CancellationToken,
    mut f: impl FnMut() + Send + 'static,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = ticker.tick() => f(),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// Starts the tasks that declare silent workers lost and expire silent applications.
pub(crate) fn spawn(core: &Arc<Core>, shutdown: CancellationToken) {
    let quarter = |timeout: Duration| (timeout / 4).max(Duration::from_millis(50));
    let workers = core.clone();
    every(
        quarter(core.config.worker_timeout),
        shutdown.clone(),
        move || expire_workers(&workers),
    );
    let apps = core.clone();
    every(
        quarter(core.config.app_timeout),
        shutdown.clone(),
        move || expire_apps(&apps),
    );
    tokio::spawn(lead(core.clone(), shutdown));
}

fn expire_workers(core: &Core) {
    // Every master declares its own view of the workers; the leader's losses are counted.
    let leads = core.leader_check().is_ok();
    let mut state = core.lock();
    let timeout = core.config.worker_timeout;
    for worker in state.workers.values_mut() {
        if worker.alive && worker.last_seen.elapsed() > timeout {
            worker.alive = false;
            if leads {
                core.metrics.workers_lost_total.increment(1);
            }
            tracing::warn!(worker = %worker.info.id, timeout = ?timeout, "worker lost: no heartbeat in time");
        }
    }
}

/// On the leader: applications silent for `app_timeout` are removed through the log, then
/// their data deleted on every live worker.
fn expire_apps(core: &Arc<Core>) {
    if core.leader_check().is_err() {
        return;
    }
    let timeout = core.config.app_timeout;
    let expired: Vec<Arc<str>> = core
        .lock()
        .apps
        .iter()
        .filter(|(_, seen)| seen.elapsed() > timeout)
        .map(|(app, _)| app.clone())
        .collect();
    for app in expired {
        let core = core.clone();
        tokio::spawn(async move {
            let command = state::command(Cmd::AppRemoved(pb::AppRemoved {
                app_id: app.to_string(),
            }));
            if let Err(e) = core.propose(command).await {
                tracing::warn!(app = %app, error = %e, "application expiry not recorded");
                return;
            }
            let workers: Vec<pb::WorkerInfo> = core
                .lock()
                .workers
                .values()
                .filter(|w| w.alive)
                .map(|w| w.info.clone())
                .collect();
            tracing::info!(app = %app, timeout = ?timeout, "application expired, deleting its data");
            core.destroy_on(workers, &app, None);
        });
    }
}

/// Watches this master's Raft role. Each time it becomes the leader, it first waits until its
/// state holds every change committed before (a read barrier: a restarted lone master leads
/// again in its old term, with entries still to apply), and only then serves: it restarts the
/// clocks of the applications (their heartbeats went to the former leader) and resumes the
/// commits the former leader left running. While leading, it starts the commit of every
/// shuffle an applied map end completed (also those whose map end a former leader logged but
/// did not answer).
async fn lead(core: Arc<Core>, shutdown: CancellationToken) {
    let mut metrics = core.raft.metrics();
    loop {
        let (leads, term) = {
            let m = metrics.borrow();
            (
                m.state == ServerState::Leader && m.current_leader == Some(core.id),
                m.current_term,
            )
        };
        if leads && !core.ready_in(term) {
            let barrier = tokio::select! {
                barrier = core.raft.ensure_linearizable() => barrier,
                _ = shutdown.cancelled() => return,
            };
            match barrier {
                Ok(_) => {
                    {
                        let mut state = core.lock();
                        let apps: Vec<Arc<str>> =
                            state.shuffles.keys().map(|k| k.app_id.clone()).collect();
                        for app in apps {
                            state.touch_app(&app);
                        }
                    }
                    core.set_ready(term);
                    tracing::info!(id = core.id, term, addr = %core.addr, "leading the masters");
                    commit::resume(&core);
                }
                Err(e) => tracing::debug!(error = %e, "not leading after all"),
            }
        }
        let completed = std::mem::take(&mut core.lock().completed);
        if core.leader_check().is_ok() {
            for key in completed {
                commit::start(&core, key);
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}
