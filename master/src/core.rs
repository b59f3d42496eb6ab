//! The master's core: its configuration, its state, and its client for the calls it makes into
//! workers over their push port (`Reserve`, `Commit`, `Destroy`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{Frame, FrameLimits, MessageType};
use sluice_protocol::pb;
use sluice_protocol::rpc::RpcPool;
use tokio_util::sync::CancellationToken;

use crate::config::MasterConfig;
use crate::error::{MasterError, MasterResult};
use crate::state::State;

#[derive(Debug)]
pub(crate) struct Core {
    pub config: MasterConfig,
    state: Mutex<State>,
    workers: RpcPool,
    /// Serializes shuffle registrations, so two registrations of one shuffle cannot both place.
    pub registering: tokio::sync::Mutex<()>,
    /// Cancelled when the master stops: long polls answer at once.
    pub shutdown: CancellationToken,
}

impl Core {
    pub fn new(config: MasterConfig, shutdown: CancellationToken) -> Core {
        Core {
            config,
            state: Mutex::default(),
            workers: RpcPool::new(FrameLimits::default(), Duration::from_secs(5)),
            registering: tokio::sync::Mutex::new(()),
            shutdown,
        }
    }

    /// The state. Nothing awaits while holding it.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn call_worker(
        &self,
        worker: &pb::WorkerInfo,
        frame: OutFrame,
        expected: MessageType,
        timeout: Duration,
    ) -> MasterResult<Frame> {
        self.workers
            .call(&worker.push_addr(), frame, expected, timeout)
            .await
            .map_err(|source| MasterError::Worker {
                worker: worker.id.clone(),
                source,
            })
    }

    /// Asks workers to delete a shuffle (`Some`) or an application; failures are logged.
    pub fn destroy_on(
        self: &Arc<Self>,
        workers: Vec<pb::WorkerInfo>,
        app_id: &str,
        shuffle_id: Option<u32>,
    ) {
        let header = pb::DestroyHeader {
            app_id: app_id.to_string(),
            shuffle_id,
        };
        for worker in workers {
            let core = self.clone();
            let frame = OutFrame::new(MessageType::Destroy, 0, &header);
            tokio::spawn(async move {
                let timeout = core.config.worker_rpc_timeout;
                if let Err(e) = core
                    .call_worker(&worker, frame, MessageType::Ack, timeout)
                    .await
                {
                    tracing::warn!(worker = %worker.id, error = %e, "delete on worker failed");
                }
            });
        }
    }
}
