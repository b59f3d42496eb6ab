//! What an application's session may touch: only its own application's shuffles. Cluster
//! sessions and connections without authentication are not limited here (the authorization
//! table in [`super::Conn::authorize`] limits what each kind of frame needs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_protocol::ShuffleKey;

use super::{Conn, Port};
use crate::error::{WorkerError, WorkerResult};
use crate::shared::Shared;

/// Open connections per port and application.
pub type AppCounts = Arc<Mutex<HashMap<(Port, Arc<str>), usize>>>;

/// One application session's place among its application's connections to a port
/// (`max_connections_per_app`); dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct AppSlot {
    counts: AppCounts,
    key: (Port, Arc<str>),
}

impl AppSlot {
    /// A place for a session of `app` on `port`, unless the application holds
    /// `max_connections_per_app` there already (`Busy`: the client's other connections go on).
    pub(crate) fn take(shared: &Shared, port: Port, app: &str) -> WorkerResult<AppSlot> {
        let limit = shared.config.max_connections_per_app;
        let key = (port, Arc::<str>::from(app));
        let mut counts = shared
            .app_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= limit {
            tracing::warn!(
                app,
                ?port,
                limit,
                "application connection limit reached, refusing"
            );
            return Err(WorkerError::TooManyConnections(format!(
                "application {app} holds {limit} connections to this port \
                 (max_connections_per_app)"
            )));
        }
        *count += 1;
        Ok(AppSlot {
            counts: shared.app_connections.clone(),
            key,
        })
    }
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Conn {
    /// The application this connection's session speaks for, if it is an application's.
    pub(crate) fn app(&self) -> Option<&str> {
        self.principal.as_ref().and_then(|p| p.app_id())
    }
}

/// Refuses a frame of application `app`'s session that names another application's shuffle.
pub(crate) fn check_app(app: Option<&str>, shuffle: &ShuffleKey) -> WorkerResult<()> {
    match app {
        Some(app) if *shuffle.app_id != *app => Err(WorkerError::PermissionDenied(format!(
            "app:{app} may not touch shuffle {shuffle} of application {}",
            shuffle.app_id
        ))),
        _ => Ok(()),
    }
}
