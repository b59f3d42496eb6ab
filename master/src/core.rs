//! The master's core: its configuration, its state, and its client for the calls it makes into
//! workers over their push port (`Reserve`, `Commit`, `Destroy`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prost::Message;
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{Frame, FrameLimits, MessageType};
use sluice_protocol::rpc::RpcPool;
use sluice_protocol::{pb, ProtocolError, ShuffleKey};
use tokio_util::sync::CancellationToken;

use crate::config::MasterConfig;
use crate::error::{MasterError, MasterResult};
use crate::state::State;

/// Most header bytes of one paged `Reserve` or `Commit` frame (the workers accept 16 MiB).
pub const PAGE_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub(crate) struct Core {
    pub config: MasterConfig,
    state: Mutex<State>,
    workers: RpcPool,
    /// Cancelled when the master stops: long polls answer at once.
    pub shutdown: CancellationToken,
}

impl Core {
    pub fn new(config: MasterConfig, shutdown: CancellationToken) -> Core {
        Core {
            config,
            state: Mutex::default(),
            workers: RpcPool::new(FrameLimits::default(), Duration::from_secs(5)),
            shutdown,
        }
    }

    /// The state. Nothing awaits while holding it.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `frame` to `worker` and waits up to `timeout` for an answer of type `expected`. The
    /// whole call is bounded, connecting and queueing included: a worker that accepts
    /// connections and never reads (a stopped process) costs `timeout`, no more.
    pub async fn call_worker(
        &self,
        worker: &pb::WorkerInfo,
        frame: OutFrame,
        expected: MessageType,
        timeout: Duration,
    ) -> MasterResult<Frame> {
        let addr = worker.push_addr();
        let call = self.workers.call(&addr, frame, expected, timeout);
        let answer = match tokio::time::timeout(timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(ProtocolError::Timeout {
                peer: addr,
                millis: timeout.as_millis() as u64,
            }),
        };
        answer.map_err(|source| MasterError::Worker {
            worker: worker.id.clone(),
            source,
        })
    }

    /// Splits `specs` into the pages of one `Reserve` or `Commit` frame: at most
    /// `max_locations_per_frame` locations and [`PAGE_BYTES`] of header each, so no frame comes
    /// near the workers' 16 MiB header limit however large the shuffle or long the names.
    pub fn pages(&self, specs: Vec<pb::LocationSpec>) -> Vec<Vec<pb::LocationSpec>> {
        let most = self.config.max_locations_per_frame as usize;
        let mut pages = Vec::new();
        let mut page = Vec::new();
        let mut bytes = 0;
        for spec in specs {
            // The field's tag and length prefix: at most 1 + 5 bytes.
            let len = spec.encoded_len() + 6;
            if !page.is_empty() && (page.len() == most || bytes + len > PAGE_BYTES) {
                pages.push(std::mem::take(&mut page));
                bytes = 0;
            }
            bytes += len;
            page.push(spec);
        }
        if !page.is_empty() {
            pages.push(page);
        }
        pages
    }

    /// Reserves `specs` of shuffle `key` on `worker`, one page after the other, each within
    /// `reserve_timeout`.
    pub async fn reserve(
        &self,
        worker: &pb::WorkerInfo,
        key: &ShuffleKey,
        specs: Vec<pb::LocationSpec>,
    ) -> MasterResult<()> {
        for locations in self.pages(specs) {
            let header = pb::ReserveHeader {
                shuffle: Some(key.to_pb()),
                locations,
            };
            let frame = OutFrame::new(MessageType::Reserve, 0, &header);
            self.call_worker(worker, frame, MessageType::Ack, self.config.reserve_timeout)
                .await?;
        }
        Ok(())
    }

    /// Commits one page of locations (see [`Core::pages`]) of shuffle `key` on `worker`.
    pub async fn commit_page(
        &self,
        worker: &pb::WorkerInfo,
        key: &ShuffleKey,
        locations: Vec<pb::LocationSpec>,
    ) -> MasterResult<pb::CommittedHeader> {
        let header = pb::CommitHeader {
            shuffle: Some(key.to_pb()),
            locations,
        };
        let frame = OutFrame::new(MessageType::Commit, 0, &header);
        let timeout = self.config.commit_timeout;
        self.call_worker(worker, frame, MessageType::Committed, timeout)
            .await?
            .decode_header("committed")
            .map_err(|source| MasterError::Worker {
                worker: worker.id.clone(),
                source,
            })
    }

    /// Gives `worker` no new partitions for `worker_timeout` (a reservation could not reach it),
    /// unless nothing else is left.
    pub fn avoid(&self, worker: &str) {
        if let Some(entry) = self.lock().workers.get_mut(worker) {
            entry.avoid_until = Some(Instant::now() + self.config.worker_timeout);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn core(max_locations_per_frame: u32) -> Core {
        let config = MasterConfig {
            max_locations_per_frame,
            ..MasterConfig::default()
        };
        Core::new(config, CancellationToken::new())
    }

    fn spec(partition: u32, replica: Option<pb::WorkerInfo>) -> pb::LocationSpec {
        pb::LocationSpec {
            partition,
            epoch: 3,
            role: pb::Role::Primary as i32,
            replica,
        }
    }

    #[test]
    fn pages_hold_at_most_the_configured_locations_in_order() {
        let specs: Vec<_> = (0..40_000).map(|p| spec(p, None)).collect();
        let pages = core(16_384).pages(specs);
        let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![16_384, 16_384, 7_232]);
        let partitions: Vec<u32> = pages.iter().flatten().map(|s| s.partition).collect();
        assert_eq!(partitions, (0..40_000).collect::<Vec<_>>());
        assert!(core(7).pages(Vec::new()).is_empty());
    }

    #[test]
    fn a_page_header_stays_far_below_the_workers_limit_whatever_the_names() {
        // Primaries naming a replica whose every label is as long as registration allows.
        let long = "x".repeat(253);
        let replica = pb::WorkerInfo {
            id: long.clone(),
            host: long.clone(),
            push_port: 65535,
            fetch_port: 65535,
            node: long.clone(),
            zone: long,
        };
        let specs: Vec<_> = (0..20_000)
            .map(|p| spec(1_000_000 + p, Some(replica.clone())))
            .collect();
        let pages = core(16_384).pages(specs);
        assert!(pages.len() > 4, "{} pages", pages.len());
        let key = ShuffleKey::new("x".repeat(255), u32::MAX);
        for locations in pages {
            let header = pb::ReserveHeader {
                shuffle: Some(key.to_pb()),
                locations,
            };
            assert!(header.encoded_len() <= PAGE_BYTES + 300);
            assert!(header.encoded_len() < FrameLimits::default().max_header as usize / 3);
        }
    }
}
