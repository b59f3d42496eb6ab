//! The push path: a writer's (or a primary's) batches into partition buffers, and on to the
//! replica before the push is acknowledged.
//!
//! Pushes are handled in arrival order on the connection's task. Every slice of a push is a
//! zero-copy `Bytes` of the frame's leased body, except slices of at most [`COPY_AT_MOST`] bytes
//! that are a small part of their frame: those are copied under a lease of their own, so a
//! cold partition's few bytes do not keep a hot partition's megabyte alive. A primary answers
//! only once every replica acknowledged its forward (which holds slices of the same leased body,
//! so memory stays accounted while the forward is in flight).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_protocol::batch::BATCH_HEAD_LEN;
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{Frame, MessageType, FLAG_CRC, FLAG_REPLICA};
use sluice_protocol::{pb, ShuffleKey};
use tokio_util::sync::CancellationToken;

use super::access::check_app;
use super::{ack, busy, control, error_frame, next_frame, split, Accepted, Next};
use crate::error::{WorkerError, WorkerResult};
use crate::memory::copy_leased;
use crate::shared::Shared;
use crate::storage::layout::LocationId;

/// Largest slice copied out of its frame (when it is at most a sixteenth of the frame).
pub const COPY_AT_MOST: usize = 4096;

pub async fn serve(stream: Accepted, peer: &str, shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some((mut conn, tx, writer)) = split(stream, peer, &shared, &shutdown).await else {
        return;
    };
    loop {
        let frame = match next_frame(&mut conn, &shared, &shutdown).await {
            Next::Frame(frame) => frame,
            Next::Busy(head) => {
                if tx.send(busy(&shared, &head)).await.is_err() {
                    break;
                }
                continue;
            }
            Next::End => break,
        };
        let id = frame.request_id;
        if let Err(e) = conn.authorize(&frame) {
            shared.metrics.auth_refused_permission.increment(1);
            tracing::warn!(peer, error = %e, "frame refused");
            if tx.send(error_frame(id, &e)).await.is_err() {
                break;
            }
            continue;
        }
        let answer = match frame.kind {
            MessageType::PushData | MessageType::PushMergedData => {
                let started = Instant::now();
                let metrics = &shared.metrics;
                metrics.push_requests.increment(1);
                let answer = match handle(&shared, &frame, conn.may_replicate(), conn.app()) {
                    Ok(forwards) if forwards.is_empty() => ack(id),
                    Ok(forwards) => {
                        // Ack only once every replica acked; keep reading meanwhile.
                        let (shared, tx) = (shared.clone(), tx.clone());
                        tokio::spawn(async move {
                            let answer = forward_to_replicas(&shared, id, forwards).await;
                            let took = started.elapsed();
                            shared.metrics.push_latency.record(took.as_secs_f64());
                            shared.metrics.traffic.push_answered(took);
                            let _ = tx.send(answer).await;
                        });
                        continue;
                    }
                    Err(e) => {
                        if matches!(e, WorkerError::PermissionDenied(_)) {
                            metrics.auth_refused_permission.increment(1);
                        }
                        tracing::debug!(peer, error = %e, "push refused");
                        error_frame(id, &e)
                    }
                };
                let took = started.elapsed();
                metrics.push_latency.record(took.as_secs_f64());
                metrics.traffic.push_answered(took);
                answer
            }
            MessageType::Reserve | MessageType::Commit | MessageType::Destroy => {
                control::serve(&shared, frame, tx.clone());
                continue;
            }
            MessageType::HandOver => {
                let (shared, tx) = (shared.clone(), tx.clone());
                tokio::spawn(async move {
                    let answer = match hand_in(&shared, frame).await {
                        Ok(()) => ack(id),
                        Err(e) => {
                            tracing::warn!(error = %e, "hand-over piece refused");
                            error_frame(id, &e)
                        }
                    };
                    let _ = tx.send(answer).await;
                });
                continue;
            }
            other => error_frame(
                id,
                &WorkerError::InvalidRequest(format!("{other:?} is not served on the push port")),
            ),
        };
        if tx.send(answer).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A push a primary sends on to a replica: the replica's address and the frame.
type Forward = (String, OutFrame);

/// Appends a push's slices to their partitions. On a primary whose partitions have replicas,
/// returns the pushes to forward before the client may be acked.
/// `app`: the application of the connection's session, whose shuffles alone it may push to.
fn handle(
    shared: &Shared,
    frame: &Frame,
    may_replicate: bool,
    app: Option<&str>,
) -> WorkerResult<Vec<Forward>> {
    if frame.flags & FLAG_CRC == 0 {
        return Err(WorkerError::InvalidRequest(
            "a push must carry a frame checksum".into(),
        ));
    }
    if shared.is_decommissioning() {
        return Err(WorkerError::Leaving(shared.info.id.clone()));
    }
    let header: pb::PushHeader = frame.decode_header("push")?;
    let shuffle =
        ShuffleKey::from_pb(header.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    check_app(app, &shuffle)?;
    let replica = header.role == pb::Role::Replica as i32;
    if replica && !may_replicate {
        return Err(WorkerError::PermissionDenied(
            "only a worker may push to replica locations".into(),
        ));
    }
    let body_len = frame.body.len();
    check_slices(&header.slices, body_len)?;
    let ids = header
        .slices
        .iter()
        .map(|s| LocationId::new(s.partition, s.epoch, header.role))
        .collect::<WorkerResult<Vec<_>>>()?;
    let partitions = shared.store.get_many(&shuffle, ids.into_iter());
    let mut resolved = Vec::with_capacity(partitions.len());
    for (slice, partition) in header.slices.iter().zip(partitions) {
        let partition = partition.ok_or_else(|| {
            WorkerError::NotFound(format!(
                "{shuffle} partition {} epoch {} is not reserved on this worker",
                slice.partition, slice.epoch
            ))
        })?;
        resolved.push(partition);
    }
    let threshold = shared.config.flush_buffer_size.as_u64();
    let size_cap = shared.config.partition_size_cap.as_u64();
    let memory = shared.store.memory();
    let mut offset = 0usize;
    let mut forwards: HashMap<String, (Vec<pb::PushSlice>, Vec<Bytes>)> = HashMap::new();
    for (slice, partition) in header.slices.iter().zip(resolved) {
        let end = offset + slice.length as usize;
        let bytes = if slice.length as usize <= COPY_AT_MOST && (end - offset) * 16 <= body_len {
            copy_leased(memory, &frame.body[offset..end])
        } else {
            frame.body.slice(offset..end)
        };
        match partition.append(slice.partition, bytes.clone(), threshold, size_cap) {
            Ok(true) => shared.store.note_buffered(&partition),
            Ok(false) => {}
            Err(e) => {
                // The slices before this one were taken.
                shared.metrics.pushed(offset as u64);
                // A drain sealed the location after the check above: the writer must move
                // on, not take the seal for another attempt's commit.
                if matches!(e, WorkerError::Committed(_)) && shared.is_decommissioning() {
                    return Err(WorkerError::Leaving(shared.info.id.clone()));
                }
                return Err(e);
            }
        }
        offset = end;
        if let (false, Some(replica)) = (replica, partition.replica()) {
            let (slices, body) = forwards.entry(replica).or_default();
            slices.push(*slice);
            body.push(bytes);
        }
    }
    shared.metrics.pushed(body_len as u64);
    Ok(forwards
        .into_iter()
        .map(|(replica, (slices, body))| {
            let header = pb::PushHeader {
                shuffle: header.shuffle.clone(),
                slices,
                role: pb::Role::Replica as i32,
            };
            let frame = OutFrame::new(MessageType::PushMergedData, 0, &header)
                .with_body(body)
                .with_flags(FLAG_REPLICA);
            (replica, frame)
        })
        .collect())
}

/// Takes a piece of a location a draining peer hands over (see `storage::handover`).
async fn hand_in(shared: &Shared, frame: Frame) -> WorkerResult<()> {
    if shared.is_decommissioning() {
        return Err(WorkerError::Leaving(shared.info.id.clone()));
    }
    let header: pb::HandOverHeader = frame.decode_header("hand-over")?;
    let shuffle =
        ShuffleKey::from_pb(header.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    let spec = header
        .location
        .ok_or_else(|| WorkerError::InvalidRequest("a hand-over names no location".into()))?;
    let id = LocationId::of_spec(&spec)?;
    let last = match (header.last, header.stats) {
        (true, Some(stats)) => Some(stats),
        (true, None) => {
            return Err(WorkerError::InvalidRequest(
                "the last piece of a hand-over carries no totals".into(),
            ))
        }
        (false, _) => None,
    };
    if header.on_dfs {
        let stats = last.ok_or_else(|| {
            WorkerError::InvalidRequest("a hand-over on the DFS is one last piece".into())
        })?;
        return shared
            .store
            .hand_in_dfs(&shuffle, id, header.data_length, stats)
            .await;
    }
    let bytes = frame.body.len() as u64;
    shared
        .store
        .hand_in(&shuffle, id, header.offset, frame.body, last)
        .await?;
    shared.metrics.handed_in_bytes.increment(bytes);
    Ok(())
}

/// Slices must be non-empty, hold at least one batch head each, and add up to the body.
fn check_slices(slices: &[pb::PushSlice], body_len: usize) -> WorkerResult<()> {
    if slices.is_empty() || slices.len() > body_len / BATCH_HEAD_LEN {
        return Err(WorkerError::InvalidRequest(format!(
            "{} slices cannot split a body of {body_len} bytes into whole batches",
            slices.len()
        )));
    }
    if let Some(empty) = slices.iter().find(|s| (s.length as usize) < BATCH_HEAD_LEN) {
        return Err(WorkerError::InvalidRequest(format!(
            "a slice of {} bytes for partition {} holds no whole batch",
            empty.length, empty.partition
        )));
    }
    let total: u64 = slices.iter().map(|s| u64::from(s.length)).sum();
    if total != body_len as u64 {
        return Err(WorkerError::InvalidRequest(format!(
            "slices add up to {total} bytes but the body has {body_len}"
        )));
    }
    Ok(())
}

/// Sends each forward to its replica; the answer to the client's push `id` is an ack only if
/// every replica acked. A failed replica is reported to the client, never hidden: the batch is
/// not acknowledged until both copies hold it.
async fn forward_to_replicas(shared: &Arc<Shared>, id: u64, forwards: Vec<Forward>) -> OutFrame {
    let mut calls = tokio::task::JoinSet::new();
    for (replica, frame) in forwards {
        shared.metrics.replication_forwards.increment(1);
        shared
            .metrics
            .replication_forward_bytes
            .increment(frame.body_len() as u64);
        let shared = shared.clone();
        calls.spawn(async move {
            let sent = std::time::Instant::now();
            let result = shared
                .peers
                .call(
                    &replica,
                    frame,
                    MessageType::Ack,
                    shared.config.replica_timeout,
                )
                .await;
            shared.metrics.traffic.forwarded(&replica, sent.elapsed());
            (replica, result)
        });
    }
    let mut failure = None;
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((replica, Err(e))) => {
                shared.metrics.replication_failures.increment(1);
                failure = Some(format!("replica {replica} did not take the push: {e}"))
            }
            Err(e) => {
                shared.metrics.replication_failures.increment(1);
                failure = Some(format!("forwarding task failed: {e}"))
            }
        }
    }
    match failure {
        None => ack(id),
        Some(message) => {
            tracing::warn!(error = %message, "replication failed");
            OutFrame::error(id, sluice_protocol::ErrorCode::Unavailable, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(partition: u32, length: u32) -> pb::PushSlice {
        pb::PushSlice {
            partition,
            epoch: 0,
            length,
        }
    }

    #[test]
    fn slices_must_be_whole_and_add_up() {
        assert!(check_slices(&[slice(0, 100), slice(1, 50)], 150).is_ok());
        assert!(check_slices(&[], 150).is_err(), "no slice");
        assert!(
            check_slices(&[slice(0, 150), slice(1, 0)], 150).is_err(),
            "an empty slice"
        );
        assert!(
            check_slices(&[slice(0, 10), slice(1, 140)], 150).is_err(),
            "no whole batch"
        );
        assert!(
            check_slices(&[slice(0, 100)], 150).is_err(),
            "short of the body"
        );
        let many: Vec<_> = (0..1_000_000).map(|p| slice(p, 0)).collect();
        assert!(
            check_slices(&many, 40 << 20).is_err(),
            "a million empty slices"
        );
    }
}
