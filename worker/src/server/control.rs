//! The master's calls into a worker: reserve locations, commit them, delete a shuffle or an
//! application. Each runs on its own task so a long commit never holds up the connection's
//! pushes; the answer goes back through the connection's writer.

use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{Frame, MessageType};
use sluice_protocol::{pb, ShuffleKey};
use std::sync::Arc;
use tokio::sync::mpsc;

use super::{ack, reply};
use crate::error::{WorkerError, WorkerResult};
use crate::shared::Shared;

/// Serves a Reserve, Commit or Destroy frame; the answer goes to `tx`.
pub fn serve(shared: &Arc<Shared>, frame: Frame, tx: mpsc::Sender<OutFrame>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let id = frame.request_id;
        let answer = match frame.kind {
            MessageType::Reserve => reply(id, reserve(&shared, &frame), |()| ack(id)),
            MessageType::Commit => reply(id, commit(&shared, &frame).await, |committed| {
                OutFrame::new(MessageType::Committed, id, &committed)
            }),
            _ => reply(id, destroy(&shared, &frame).await, |()| ack(id)),
        };
        let _ = tx.send(answer).await;
    });
}

fn reserve(shared: &Shared, frame: &Frame) -> WorkerResult<()> {
    let header: pb::ReserveHeader = frame.decode_header("reserve")?;
    let shuffle =
        ShuffleKey::from_pb(header.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    shared.store.reserve(&shuffle, &header.locations)
}

async fn commit(shared: &Shared, frame: &Frame) -> WorkerResult<pb::CommittedHeader> {
    let started = std::time::Instant::now();
    let header: pb::CommitHeader = frame.decode_header("commit")?;
    let shuffle =
        ShuffleKey::from_pb(header.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    let locations = shared.store.commit(&shuffle, &header.locations).await;
    shared
        .metrics
        .commit_latency
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(shuffle = %shuffle, locations = locations.len(), "committed");
    Ok(pb::CommittedHeader { locations })
}

async fn destroy(shared: &Shared, frame: &Frame) -> WorkerResult<()> {
    let header: pb::DestroyHeader = frame.decode_header("destroy")?;
    sluice_protocol::ids::validate_app_id(&header.app_id).map_err(WorkerError::InvalidRequest)?;
    shared
        .store
        .destroy(&header.app_id, header.shuffle_id)
        .await;
    Ok(())
}
