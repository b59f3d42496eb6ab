//! The master's background tasks: declaring silent workers lost and expiring silent
//! applications (deleting their data on the workers).

use std::sync::Arc;
use std::time::Duration;

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
    let mut state = core.lock();
    let timeout = core.config.worker_timeout;
    for worker in state.workers.values_mut() {
        if worker.alive && worker.last_seen.elapsed() > timeout {
            worker.alive = false;
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

/// Watches this master's Raft role. Each time it becomes a leader whose state holds every
/// earlier change, it restarts the clocks of the applications (their heartbeats went to the
/// former leader) and resumes the commits the former leader left running.
async fn lead(core: Arc<Core>, shutdown: CancellationToken) {
    let mut metrics = core.raft.metrics();
    let mut led_term = None;
    loop {
        let term = metrics.borrow().current_term;
        if core.leader_check().is_ok() && led_term != Some(term) {
            led_term = Some(term);
            tracing::info!(id = core.id, term, addr = %core.addr, "leading the masters");
            {
                let mut state = core.lock();
                let apps: Vec<Arc<str>> = state.shuffles.keys().map(|k| k.app_id.clone()).collect();
                for app in apps {
                    state.touch_app(&app);
                }
            }
            commit::resume(&core);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}
