//! The master's background tasks: declaring silent workers lost and expiring silent
//! applications (deleting their data on the workers).

use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::pb;
use tokio_util::sync::CancellationToken;

use crate::core::Core;

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
    every(quarter(core.config.app_timeout), shutdown, move || {
        expire_apps(&apps)
    });
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

fn expire_apps(core: &Arc<Core>) {
    let timeout = core.config.app_timeout;
    let (expired, workers) = {
        let mut state = core.lock();
        let expired: Vec<Arc<str>> = state
            .apps
            .iter()
            .filter(|(_, seen)| seen.elapsed() > timeout)
            .map(|(app, _)| app.clone())
            .collect();
        for app in &expired {
            state.apps.remove(app);
            state.shuffles.retain(|key, _| key.app_id != *app);
        }
        let workers: Vec<pb::WorkerInfo> = state
            .workers
            .values()
            .filter(|w| w.alive)
            .map(|w| w.info.clone())
            .collect();
        (expired, workers)
    };
    for app in expired {
        tracing::info!(app = %app, timeout = ?timeout, "application expired, deleting its data");
        core.destroy_on(workers.clone(), &app, None);
    }
}
