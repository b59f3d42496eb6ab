//! What an application's session may touch: only its own application's shuffles. Cluster
//! sessions and connections without authentication are not limited here (the authorization
//! table in [`super::Conn::authorize`] limits what each kind of frame needs).

use sluice_protocol::ShuffleKey;

use super::Conn;
use crate::error::{WorkerError, WorkerResult};

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
