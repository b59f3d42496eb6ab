//! Who may call what on the master, and how much one application may ask of it at once.
//!
//! With a cluster secret, every call but `RegisterApplication` is signed
//! ([`sluice_protocol::auth::grpc`]). Each handler names what it needs ([`Need`]) and calls
//! [`Core::authorize`] first; the signer's principal must fit:
//!
//! | need | principals |
//! |---|---|
//! | [`Need::App`] (shuffle and application calls) | `app:<that app>`, or any cluster principal |
//! | [`Need::Worker`] (registration, heartbeats) | `worker:<that id>`, or `master:*` / `admin` |
//! | [`Need::Cluster`] (membership, Raft) | `master:*`, `admin` |
//! | [`Need::Any`] (status) | any signer |
//!
//! So only a holder of the cluster secret can register a worker id, and one application's
//! client can touch nothing of another's. Without a cluster secret everything passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_protocol::auth::{AuthError, Principal, SignedRequest, Verifier};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Status};

use crate::core::Core;

/// What a call requires of its signer.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Any principal that signs with a valid key.
    Any,
    /// A cluster principal other than a worker: a master or an operator (`admin`).
    Cluster,
    /// The worker with this id (or a master or operator).
    Worker(&'a str),
    /// The application with this id (or any cluster principal).
    App(&'a str),
}

/// The signer's principal when `need` admits it.
fn admits(principal: &Principal, need: Need<'_>) -> bool {
    match (need, principal) {
        (Need::Any, _) => true,
        (_, Principal::Master(_) | Principal::Admin) => true,
        (Need::Worker(id), Principal::Worker(worker)) => worker == id,
        (Need::App(_), Principal::Worker(_)) => true,
        (Need::App(id), Principal::App(app)) => app == id,
        _ => false,
    }
}

fn needed(need: Need<'_>) -> String {
    match need {
        Need::Any => "any principal".into(),
        Need::Cluster => "a master or an operator".into(),
        Need::Worker(id) => format!("worker:{id}"),
        Need::App(id) => format!("app:{id}"),
    }
}

/// An authentication failure as the status a client sees.
pub fn unauthenticated(error: &AuthError) -> Status {
    Status::new(error.code().grpc_code(), error.to_string())
}

/// Applications' requests in progress, one semaphore per application.
#[derive(Debug, Default)]
pub struct Inflight {
    apps: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
}

impl Core {
    /// Checks `request`'s signature and that its principal may do what `need` says. Passes
    /// everything when the master runs without a cluster secret.
    pub fn authorize<T: SignedRequest>(
        &self,
        request: &Request<T>,
        need: Need<'_>,
    ) -> Result<(), Status> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let principal = verify(verifier, request).inspect_err(|_| {
            self.metrics.auth_refused.increment(1);
        })?;
        if admits(&principal, need) {
            Ok(())
        } else {
            self.metrics.auth_refused.increment(1);
            Err(Status::permission_denied(format!(
                "{principal} may not call {}: it needs {}",
                T::NAME.trim_start_matches("sluice."),
                needed(need)
            )))
        }
    }

    /// A slot among the `max_inflight_requests_per_app` requests `app` may have in progress;
    /// none free is `ResourceExhausted` (retryable).
    pub fn app_slot(&self, app: &str) -> Result<OwnedSemaphorePermit, Status> {
        self.inflight.acquire(
            app,
            self.config.max_inflight_requests_per_app as usize,
            self.config.max_apps as usize,
        )
    }
}

impl Inflight {
    /// A slot among the `limit` requests `app` may have in progress. Applications with none in
    /// progress are forgotten once more than twice `max_apps` are known.
    fn acquire(
        &self,
        app: &str,
        limit: usize,
        max_apps: usize,
    ) -> Result<OwnedSemaphorePermit, Status> {
        let semaphore = {
            let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
            if apps.len() > 2 * max_apps && !apps.contains_key(app) {
                apps.retain(|_, s| s.available_permits() < limit);
            }
            apps.entry(Arc::from(app))
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone()
        };
        semaphore.try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "application {app} has {limit} requests in progress on the master \
                 (max_inflight_requests_per_app); retry later"
            ))
        })
    }
}

fn verify<T: SignedRequest>(
    verifier: &Verifier,
    request: &Request<T>,
) -> Result<Principal, Status> {
    verifier.verify(request).map_err(|e| {
        tracing::debug!(error = %e, request = T::NAME, "refused an unauthenticated call");
        unauthenticated(&e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_application_gets_at_most_its_slots_and_others_are_not_held_back() {
        let inflight = Inflight::default();
        let first = inflight.acquire("a", 2, 10).unwrap();
        let _second = inflight.acquire("a", 2, 10).unwrap();
        let refused = inflight.acquire("a", 2, 10).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("max_inflight_requests_per_app"));
        let _other = inflight.acquire("b", 2, 10).unwrap();
        drop(first);
        let _again = inflight.acquire("a", 2, 10).unwrap();
        // Idle applications are forgotten past twice max_apps.
        for app in 0..5 {
            drop(inflight.acquire(&format!("idle-{app}"), 2, 1).unwrap());
        }
        assert!(inflight.apps.lock().unwrap().len() <= 4);
    }

    #[test]
    fn the_table_of_who_may_call_what() {
        let app = Principal::App("a".into());
        let other = Principal::App("b".into());
        let worker = Principal::Worker("w1".into());
        let master = Principal::Master("0".into());
        assert!(admits(&app, Need::App("a")));
        assert!(!admits(&other, Need::App("a")));
        assert!(!admits(&app, Need::Worker("w1")));
        assert!(!admits(&app, Need::Cluster));
        assert!(admits(&app, Need::Any));
        assert!(admits(&worker, Need::Worker("w1")));
        assert!(!admits(&worker, Need::Worker("w2")));
        assert!(!admits(&worker, Need::Cluster));
        assert!(admits(&master, Need::Cluster));
        assert!(admits(&master, Need::Worker("w2")));
        assert!(admits(&Principal::Admin, Need::Cluster));
    }
}
