//! Registering applications: binding an application id to its key, and handing out the token
//! its clients authenticate with (see `sluice_protocol::auth::app`).

use sluice_protocol::auth::{constant_time_eq, APP_KEY_LEN};
use sluice_protocol::pb;
use tonic::Status;

use crate::core::Core;
use crate::error::MasterError;
use crate::state;

use pb::master_command::Command as Cmd;

/// Registers `request.app_id` with its key verifier on first use and answers its token; a
/// later registration must present the same verifier. Without a cluster secret it answers that
/// the cluster runs without authentication.
pub async fn register(
    core: &Core,
    request: pb::RegisterApplicationRequest,
) -> Result<pb::RegisterApplicationResponse, Status> {
    let app = request.app_id.as_str();
    sluice_protocol::ids::validate_app_id(app).map_err(MasterError::InvalidRequest)?;
    let Some(verifier) = &core.verifier else {
        core.lock().touch_app(app);
        return Ok(pb::RegisterApplicationResponse::default());
    };
    if request.verifier.len() != APP_KEY_LEN {
        return Err(MasterError::InvalidRequest(format!(
            "an application key verifier has {APP_KEY_LEN} bytes, got {}",
            request.verifier.len()
        ))
        .into());
    }
    let known = {
        let state = core.lock();
        let known = state.app_verifiers.get(app).cloned();
        if known.is_none() && state.app_verifiers.len() >= core.config.max_apps as usize {
            return Err(MasterError::Limit {
                key: "max_apps",
                retryable: true,
                message: format!(
                    "the cluster has {} registered applications (max_apps); application {app} \
                     must wait until one ends",
                    state.app_verifiers.len()
                ),
            }
            .into());
        }
        known
    };
    let refused = || {
        core.metrics.auth_refused.increment(1);
        tracing::warn!(
            app,
            "application registration refused: another secret holds its id"
        );
        Status::unauthenticated(format!(
            "application {app} is registered with another secret"
        ))
    };
    match known {
        Some(known) if constant_time_eq(&known, &request.verifier) => {}
        Some(_) => return Err(refused()),
        None => {
            let command = state::command(Cmd::AppRegistered(pb::AppRegistered {
                app_id: app.to_string(),
                verifier: request.verifier.clone(),
            }));
            let reply = core.propose(command).await?;
            if !reply.error.is_empty() {
                return Err(refused());
            }
            tracing::info!(app, "application registered");
        }
    }
    core.lock().touch_app(app);
    let key = verifier.keyring().signing();
    Ok(pb::RegisterApplicationResponse {
        auth: true,
        kid: key.kid().as_bytes().to_vec(),
        token: key.app_token(app).expose().to_vec(),
    })
}
