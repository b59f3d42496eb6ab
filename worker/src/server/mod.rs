//! The worker's ports: accept loops, connection limits and the frame loop they share.
//!
//! - [`push`]: pushes from writers and forwards from primaries, into partition buffers and on to
//!   replicas.
//! - [`control`]: the master's Reserve, Commit and Destroy (served on the push port).
//! - [`fetch`]: OpenStream and FetchChunk for readers, and their batched forms OpenStreams and
//!   FetchChunks (many locations or chunks of one worker per request).
//!
//! Every connection reads frames the same way ([`next_frame`]): the head first; then a memory
//! lease for the header and body it announces (or, when none comes within `busy_wait`, the frame
//! is read past without being held and answered `Busy`); then the body into an allocation that
//! carries the lease. A connection idle past `connection_idle_timeout`, or a frame not
//! delivered within `frame_read_timeout`, is closed; each port takes at most
//! `max_connections`, and `max_connections_per_ip` from one address. A malformed frame closes
//! only its connection. With TLS on a port, [`accept_loop`] runs the TLS handshake before the
//! session handshake, both within `auth_handshake_timeout` of the accept.

mod access;
pub use access::AppCounts;
pub mod control;
pub mod fetch;
pub mod push;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use sluice_protocol::auth::{server_handshake, Principal};
use sluice_protocol::connection::{write_queued, FrameReader, FrameWriter, OutFrame, ReadError};
use sluice_protocol::frame::{Frame, FrameHead, FrameLimits, MessageType, FLAG_REPLICA};
use sluice_protocol::pb;
use sluice_protocol::tls::{TlsAcceptor, TLS_HANDSHAKE_RECORD};
use sluice_protocol::transport::{ReadHalf, Stream, WriteHalf};
use sluice_protocol::ErrorCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{WorkerError, WorkerResult};
use crate::memory::{leased_bytes, Class};
use crate::metrics::OpenConnection;
use crate::shared::Shared;

/// Read buffer a connection starts with: room for heads, headers and small frames; bodies are
/// read into allocations of their own.
const READ_BUFFER: usize = 16 * 1024;

/// What a TLS session holds per connection (rustls' record buffers, about 11 KiB measured on an
/// idle one, a full 16 KiB record in flight), counted against the memory budget for as long as
/// the connection is open: thousands of idle TLS connections cannot hold memory past it.
const TLS_CONNECTION_MEMORY: u64 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    Push,
    Fetch,
}

/// A connection past its TLS handshake (when the port has TLS on), and when its session
/// handshake must be done by: `auth_handshake_timeout` bounds both together.
pub struct Accepted {
    pub stream: Stream,
    pub deadline: tokio::time::Instant,
    /// The port it came in on.
    pub port: Port,
}

type IpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Counts one IP address's open connections on a port; dropping it gives the place back.
struct PerIp {
    counts: IpCounts,
    ip: IpAddr,
}

impl PerIp {
    /// Takes a place for `ip`, unless it holds `limit` connections already.
    fn take(counts: &IpCounts, ip: IpAddr, limit: usize) -> Option<PerIp> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PerIp {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections on a port until shutdown: at most `max_connections` in all and
/// `max_connections_per_ip` from one address (more are closed at once, with a rate-limited
/// warning). With TLS on the port (`tls_push`, `tls_fetch`) each connection's TLS handshake
/// runs in its own task, within `auth_handshake_timeout` together with the session handshake;
/// a peer speaking plaintext gets one `Error` frame ("this port requires TLS") and is closed.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    port: Port,
    shutdown: CancellationToken,
) {
    let config = &shared.config;
    let tls_on = match port {
        Port::Push => config.tls_push,
        Port::Fetch => config.tls_fetch,
    };
    let tls = shared
        .tls_server
        .as_ref()
        .filter(|_| tls_on)
        .map(|server| server.acceptor(&[]));
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let per_ip: IpCounts = Arc::default();
    let mut refused = 0u64;
    let mut refused_per_ip = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(?port, %peer, refused, limit = config.max_connections, "connection limit reached, refusing");
                    }
                    continue;
                };
                let Some(place) = PerIp::take(&per_ip, peer.ip(), config.max_connections_per_ip)
                else {
                    refused_per_ip += 1;
                    if refused_per_ip.is_power_of_two() {
                        tracing::warn!(?port, %peer, refused = refused_per_ip, limit = config.max_connections_per_ip, "connection limit per address reached, refusing");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                let tls = tls.clone();
                let open = OpenConnection::new(shared.metrics.connections(port));
                tokio::spawn(async move {
                    let _held = (open, slot, place);
                    let deadline =
                        tokio::time::Instant::now() + shared.config.auth_handshake_timeout;
                    let peer = peer.to_string();
                    let stream = match tls {
                        None => Stream::Plain(stream),
                        Some(acceptor) => {
                            let handshake = accept_tls(stream, &acceptor, &peer, &shared);
                            let stream = tokio::select! {
                                stream = tokio::time::timeout_at(deadline, handshake) => stream,
                                _ = shutdown.cancelled() => return,
                            };
                            match stream {
                                Ok(Some(stream)) => stream,
                                Ok(None) => return,
                                Err(_) => {
                                    tracing::debug!(peer, "no TLS handshake in time, closing");
                                    return;
                                }
                            }
                        }
                    };
                    let accepted = Accepted {
                        stream,
                        deadline,
                        port,
                    };
                    match port {
                        Port::Push => push::serve(accepted, &peer, shared, shutdown).await,
                        Port::Fetch => fetch::serve(accepted, &peer, shared, shutdown).await,
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, ?port, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the server's TLS handshake on a new connection. A peer whose first byte is not a TLS
/// handshake record speaks plaintext: it gets one `Error` frame saying the port requires TLS,
/// and `None`, as does a failed handshake (counted with the refused session handshakes).
async fn accept_tls(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    peer: &str,
    shared: &Shared,
) -> Option<Stream> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    let refused = |error: &dyn std::fmt::Display| {
        let refused = shared.handshakes_refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            tracing::warn!(peer, refused, error = %error, "TLS handshake refused");
        } else {
            tracing::debug!(peer, error = %error, "TLS handshake refused");
        }
    };
    if first[0] != TLS_HANDSHAKE_RECORD {
        refused(&"plaintext on a TLS port");
        let mut writer = FrameWriter::new(stream);
        let error = OutFrame::error(
            0,
            ErrorCode::Unauthenticated,
            "this port requires TLS: dial it with TLS (tls_connect, or the client's tls)",
        );
        if writer.write_frame(&error).await.is_ok() {
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
        }
        return None;
    }
    match acceptor.accept(stream).await {
        Ok(tls) => Some(Stream::Server(Box::new(tls))),
        Err(e) => {
            refused(&e);
            None
        }
    }
}

/// A connection's reading side.
pub(crate) struct Conn {
    reader: FrameReader<ReadHalf>,
    peer: String,
    /// Who the session speaks for; `None` when the worker runs without authentication.
    principal: Option<Principal>,
    /// An application session's place among its application's connections to this port.
    _app_slot: Option<access::AppSlot>,
    /// The memory of its TLS session, when it has one.
    _tls_memory: Option<crate::memory::MemoryLease>,
}

impl Conn {
    /// The authorization table: control frames only from `master:*`, replica pushes (flagged
    /// [`FLAG_REPLICA`]) only from `worker:*`. Everything passes without authentication. A
    /// push whose header says `ROLE_REPLICA` is checked by [`Conn::may_replicate`].
    pub(crate) fn authorize(&self, frame: &Frame) -> WorkerResult<()> {
        let Some(principal) = &self.principal else {
            return Ok(());
        };
        let allowed = match frame.kind {
            MessageType::Reserve | MessageType::Commit | MessageType::Destroy => {
                matches!(principal, Principal::Master(_))
            }
            MessageType::PushData | MessageType::PushMergedData
                if frame.flags & FLAG_REPLICA != 0 =>
            {
                self.may_replicate()
            }
            MessageType::HandOver => self.may_replicate(),
            _ => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(WorkerError::PermissionDenied(format!(
                "{principal} may not send {:?}{}",
                frame.kind,
                if frame.flags & FLAG_REPLICA != 0 {
                    " as a replica"
                } else {
                    ""
                }
            )))
        }
    }

    /// Whether this connection may push to replica locations: a worker's session, or any
    /// connection without authentication.
    pub(crate) fn may_replicate(&self) -> bool {
        matches!(self.principal, None | Some(Principal::Worker(_)))
    }
}

/// What reading the next frame gave.
pub(crate) enum Next {
    Frame(Frame),
    /// The frame was read past without being held: no memory for it in time.
    Busy(FrameHead),
    End,
}

/// Opens a connection: with a keyring, runs the server handshake (by the connection's
/// deadline, `auth_handshake_timeout` after it was accepted) and tags every later frame both
/// ways; without one, takes frames as
/// they come. `None`: the handshake failed (refused with an `Error` frame) and the connection
/// is to be dropped.
pub(crate) async fn open(
    accepted: Accepted,
    peer: &str,
    shared: &Shared,
    limits: FrameLimits,
    shutdown: &CancellationToken,
) -> Option<(Conn, FrameWriter<WriteHalf>)> {
    let tls = !matches!(accepted.stream, Stream::Plain(_));
    // A new TLS connection does not wait for memory: with none free it is refused at once
    // (`Busy`), and its client retries.
    let tls_memory = match tls {
        true => shared
            .store
            .memory()
            .try_lease(TLS_CONNECTION_MEMORY, Class::Client),
        false => None,
    };
    let (read_half, write_half) = accepted.stream.split();
    let mut reader = FrameReader::with_capacity(read_half, limits, READ_BUFFER);
    let mut writer = FrameWriter::new(write_half);
    if tls && tls_memory.is_none() {
        tracing::debug!(peer, "no memory for a TLS session, refusing");
        shared.metrics.busy.increment(1);
        let memory = shared.store.memory();
        let refusal = error_frame(
            0,
            &WorkerError::Busy {
                used: memory.used(),
                budget: memory.budget(),
            },
        );
        let _ = writer.write_frame(&refusal).await;
        let _ = writer.flush().await;
        return None;
    }
    let mut principal = None;
    if let Some(keyring) = &shared.keyring {
        let handshake = server_handshake(&mut reader, &mut writer, keyring);
        let result = tokio::select! {
            result = tokio::time::timeout_at(accepted.deadline, handshake) => result,
            _ = shutdown.cancelled() => return None,
        };
        match result {
            Ok(Ok((peer_principal, sealer, opener))) => {
                tracing::debug!(peer, principal = %peer_principal, "session opened");
                writer.set_sealer(sealer);
                reader.set_opener(opener);
                principal = Some(peer_principal);
            }
            Ok(Err(e)) => {
                shared.metrics.auth_refused_handshake.increment(1);
                let refused = shared.handshakes_refused.fetch_add(1, Ordering::Relaxed) + 1;
                if refused.is_power_of_two() {
                    tracing::warn!(peer, refused, error = %e, "handshake refused");
                } else {
                    tracing::debug!(peer, error = %e, "handshake refused");
                }
                return None;
            }
            Err(_) => {
                shared.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                shared.metrics.auth_refused_handshake.increment(1);
                tracing::debug!(peer, "no handshake in time, closing");
                return None;
            }
        }
    }
    let app_slot = match principal.as_ref().and_then(|p| p.app_id()) {
        Some(app) => match access::AppSlot::take(shared, accepted.port, app) {
            Ok(slot) => Some(slot),
            Err(e) => {
                let refusal = error_frame(0, &e);
                if writer.write_frame(&refusal).await.is_ok() {
                    let _ = writer.flush().await;
                }
                return None;
            }
        },
        None => None,
    };
    let conn = Conn {
        reader,
        peer: peer.to_string(),
        principal,
        _app_slot: app_slot,
        _tls_memory: tls_memory,
    };
    Some((conn, writer))
}

/// Opens a connection ([`open`]) and hands its writing side to a writer task fed by a channel.
pub(crate) async fn split(
    stream: Accepted,
    peer: &str,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<(Conn, mpsc::Sender<OutFrame>, tokio::task::JoinHandle<()>)> {
    let (conn, writer) = open(stream, peer, shared, shared.limits, shutdown).await?;
    let (tx, rx) = mpsc::channel::<OutFrame>(256);
    let writer = tokio::spawn(async move {
        let _ = write_queued(writer, rx).await;
    });
    Some((conn, tx, writer))
}

/// Reads the next frame under the memory budget and the connection's timeouts. A push waits
/// for a lease of its class (a replica forward's head flag makes it replication traffic).
pub(crate) async fn next_frame(
    conn: &mut Conn,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Next {
    let config = &shared.config;
    let peer = conn.peer.as_str();
    let head = tokio::select! {
        head = tokio::time::timeout(config.connection_idle_timeout, conn.reader.read_head()) => head,
        _ = shutdown.cancelled() => return Next::End,
    };
    let head = match head {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return Next::End,
        Ok(Err(e)) => return closed(peer, e),
        Err(_) => {
            let mid_frame = conn.reader.is_mid_frame();
            tracing::debug!(peer, mid_frame, "closing idle connection");
            return Next::End;
        }
    };
    let memory = shared.store.memory();
    let lease = if matches!(
        head.kind,
        MessageType::PushData | MessageType::PushMergedData
    ) {
        let class = if head.flags & FLAG_REPLICA != 0 {
            Class::Replication
        } else {
            Class::Client
        };
        tokio::select! {
            lease = memory.lease(head.rest_len(), class, config.busy_wait) => lease,
            _ = shutdown.cancelled() => return Next::End,
        }
    } else {
        // Requests without data (the master's control frames, fetch requests) are never
        // turned away: they are small (the port's header limit) and they free memory or read
        // committed files. They are still counted while held.
        Some(memory.lease_now(head.rest_len()))
    };
    let rest = async {
        match lease {
            Some(mut lease) => {
                let body_len = u64::from(head.body_len);
                conn.reader
                    .read_rest(&head, move |body| {
                        lease.shrink_to(body_len);
                        leased_bytes(body, lease)
                    })
                    .await
                    .map(Next::Frame)
            }
            None => conn
                .reader
                .skip_rest(&head)
                .await
                .map(|()| Next::Busy(head)),
        }
    };
    match tokio::time::timeout(config.frame_read_timeout, rest).await {
        Ok(Ok(next)) => next,
        Ok(Err(e)) => closed(peer, e),
        Err(_) => {
            tracing::debug!(peer, kind = ?head.kind, "frame not delivered in time, closing");
            Next::End
        }
    }
}

fn closed(peer: &str, error: ReadError) -> Next {
    match error {
        ReadError::Io(e) => tracing::debug!(peer, error = %e, "connection error"),
        e => tracing::warn!(peer, error = %e, "closing connection: malformed data"),
    }
    Next::End
}

/// The answer to a frame turned away for lack of memory (counted).
pub(crate) fn busy(shared: &Shared, head: &FrameHead) -> OutFrame {
    shared.metrics.busy.increment(1);
    let memory = shared.store.memory();
    error_frame(
        head.request_id,
        &WorkerError::Busy {
            used: memory.used(),
            budget: memory.budget(),
        },
    )
}

pub(crate) fn error_frame(request_id: u64, error: &WorkerError) -> OutFrame {
    OutFrame::error(request_id, error.code(), error.to_string())
}

pub(crate) fn reply<T>(
    request_id: u64,
    result: WorkerResult<T>,
    ok: impl FnOnce(T) -> OutFrame,
) -> OutFrame {
    match result {
        Ok(value) => ok(value),
        Err(e) => error_frame(request_id, &e),
    }
}

pub(crate) fn ack(request_id: u64) -> OutFrame {
    OutFrame::new(MessageType::Ack, request_id, &pb::Ack {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_places_back_on_close() {
        let counts = IpCounts::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = PerIp::take(&counts, a, 2).unwrap();
        let second = PerIp::take(&counts, a, 2).unwrap();
        assert!(
            PerIp::take(&counts, a, 2).is_none(),
            "a third from one address"
        );
        let other = PerIp::take(&counts, b, 2).unwrap();
        drop(first);
        let again = PerIp::take(&counts, a, 2).unwrap();
        drop((second, again, other));
        assert!(
            counts.lock().unwrap().is_empty(),
            "closed addresses are forgotten"
        );
    }
}
