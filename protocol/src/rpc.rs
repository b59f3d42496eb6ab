//! A multiplexed request/response client over one framed TCP connection.
//!
//! Many requests may be in flight on one connection; responses come back in any order and are
//! matched by request id. One task writes queued frames (flushing when the queue is empty, so
//! small frames coalesce), one task reads responses and completes the waiting callers. When the
//! connection breaks, every waiting caller gets [`ProtocolError::Closed`] and the client reports
//! itself closed so pools can replace it.
//!
//! With [`Credentials`] ([`RpcClient::connect_as`], [`RpcPool::with_credentials`]) a connection
//! first runs [`crate::auth::client_handshake`] on its raw halves, before those tasks start,
//! and every frame after it is tagged; without them frames are exactly as before.
//!
//! With a [`TlsClient`] ([`RpcClient::connect_with`], [`RpcPool::with_tls`]) the TLS handshake
//! runs first, right on the TCP connection: TCP, then TLS, then the session handshake, then
//! frames.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{client_handshake, Keyring, Principal, PrincipalKeys};
use crate::connection::{write_queued, BodyPool, FrameReader, FrameWriter, OutFrame};
use crate::frame::{Frame, FrameLimits, MessageType};
use crate::tls::{host_of, is_refusal, TlsClient};
use crate::transport::{ReadHalf, Stream};
use crate::{pb, ErrorCode, ProtocolError, ProtocolResult};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ProtocolResult<Frame>>>>>;

/// Who a client authenticates as, and the keys it signs with.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub principal: Principal,
    pub keys: PrincipalKeys,
}

impl Credentials {
    /// A cluster principal keyed by the keyring's signing secret.
    pub fn cluster(principal: Principal, keyring: &Keyring) -> Credentials {
        Credentials {
            principal,
            keys: PrincipalKeys::cluster(keyring.signing()),
        }
    }
}

pub struct RpcClient {
    peer: String,
    outgoing: mpsc::Sender<OutFrame>,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("peer", &self.peer)
            .finish()
    }
}

impl RpcClient {
    /// Connects to `addr` (`host:port`) within `timeout`.
    pub async fn connect(
        addr: &str,
        limits: FrameLimits,
        timeout: Duration,
    ) -> ProtocolResult<RpcClient> {
        Self::connect_as(addr, limits, timeout, None).await
    }

    /// Connects to `addr` within `timeout` and, with `credentials`, runs the session handshake
    /// (within `timeout` too) before any request: every frame of the connection is then tagged.
    pub async fn connect_as(
        addr: &str,
        limits: FrameLimits,
        timeout: Duration,
        credentials: Option<&Credentials>,
    ) -> ProtocolResult<RpcClient> {
        Self::connect_with(addr, limits, timeout, credentials, None).await
    }

    /// Like [`RpcClient::connect_as`], and with `tls` runs the TLS handshake (within `timeout`)
    /// right after TCP connects, before the session handshake. A certificate the client does
    /// not trust is [`ProtocolError::Tls`] (not retryable).
    pub async fn connect_with(
        addr: &str,
        limits: FrameLimits,
        timeout: Duration,
        credentials: Option<&Credentials>,
        tls: Option<&TlsClient>,
    ) -> ProtocolResult<RpcClient> {
        let peer = addr.to_string();
        let timed_out = |peer: String| ProtocolError::Timeout {
            peer,
            millis: timeout.as_millis() as u64,
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ProtocolError::Io { peer, source }),
            Err(_) => return Err(timed_out(peer)),
        };
        stream
            .set_nodelay(true)
            .map_err(|source| ProtocolError::Io {
                peer: peer.clone(),
                source,
            })?;
        let stream = match tls {
            None => Stream::Plain(stream),
            Some(tls) => {
                match tokio::time::timeout(timeout, tls.connect(host_of(addr), stream)).await {
                    Ok(Ok(stream)) => Stream::Client(Box::new(stream)),
                    Ok(Err(source)) if is_refusal(&source) => {
                        return Err(ProtocolError::Tls { peer, source })
                    }
                    Ok(Err(source)) => return Err(ProtocolError::Io { peer, source }),
                    Err(_) => return Err(timed_out(peer)),
                }
            }
        };
        let (read_half, write_half) = stream.split();
        let mut reader = FrameReader::new(read_half, limits);
        let mut writer = FrameWriter::new(write_half);
        if let Some(credentials) = credentials {
            let handshake = client_handshake(
                &mut reader,
                &mut writer,
                &credentials.principal,
                &credentials.keys,
            );
            let (sealer, opener) = match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(halves)) => halves,
                Ok(Err(source)) => return Err(ProtocolError::Auth { peer, source }),
                Err(_) => {
                    return Err(ProtocolError::Timeout {
                        peer,
                        millis: timeout.as_millis() as u64,
                    })
                }
            };
            writer.set_sealer(sealer);
            reader.set_opener(opener);
        }
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (outgoing, queue) = mpsc::channel(256);
        let write_closed = closed.clone();
        tokio::spawn(async move {
            let _ = write_queued(writer, queue).await;
            write_closed.store(true, Ordering::Release);
        });
        tokio::spawn(read_loop(
            reader,
            pending.clone(),
            closed.clone(),
            peer.clone(),
        ));
        Ok(RpcClient {
            peer,
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether the connection has broken; a closed client fails every call.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `frame` (its request id is assigned here) and waits up to `timeout` for the answer.
    /// An `Error` answer becomes [`ProtocolError::Remote`].
    pub async fn call(&self, mut frame: OutFrame, timeout: Duration) -> ProtocolResult<Frame> {
        if self.is_closed() {
            return Err(ProtocolError::Closed {
                peer: self.peer.clone(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame.request_id = id;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let guard = PendingGuard {
            pending: &self.pending,
            id,
        };
        if self.outgoing.send(frame).await.is_err() {
            return Err(ProtocolError::Closed {
                peer: self.peer.clone(),
            });
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => {
                return Err(ProtocolError::Closed {
                    peer: self.peer.clone(),
                })
            }
            Err(_) => {
                return Err(ProtocolError::Timeout {
                    peer: self.peer.clone(),
                    millis: timeout.as_millis() as u64,
                })
            }
        };
        drop(guard);
        if answer.kind == MessageType::Error {
            let error: pb::ErrorHeader = answer.decode_header("error")?;
            return Err(ProtocolError::Remote {
                peer: self.peer.clone(),
                code: ErrorCode::from_u32(error.code),
                message: error.message,
            });
        }
        Ok(answer)
    }

    /// Like [`RpcClient::call`], but fails unless the answer has type `expected`.
    pub async fn call_expecting(
        &self,
        frame: OutFrame,
        expected: MessageType,
        timeout: Duration,
    ) -> ProtocolResult<Frame> {
        let answer = self.call(frame, timeout).await?;
        if answer.kind != expected {
            return Err(ProtocolError::UnexpectedResponse {
                peer: self.peer.clone(),
                kind: answer.kind,
            });
        }
        Ok(answer)
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        // The write loop ends when the sender drops; the read loop ends when the peer closes.
        self.closed.store(true, Ordering::Release);
    }
}

/// Removes a pending entry when a call is abandoned (timeout or cancellation).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().unwrap().remove(&self.id);
    }
}

/// Answers with bodies of at least this many bytes (fetched chunks) are read into buffers of
/// [`LARGE_BODIES`].
const POOLED_BODY: usize = 1 << 20;

/// The buffers large answers are read into, for every connection of the process: as many as a
/// reader's chunks in flight (`prefetch_chunks`), so an idle process keeps at most 4 x 8 MiB.
static LARGE_BODIES: BodyPool = BodyPool::new(4, 8 << 20);

async fn read_loop(
    mut reader: FrameReader<ReadHalf>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    peer: String,
) {
    // An `Error` frame with request id 0 answers no request: the peer refuses the connection
    // itself (e.g. "this port requires TLS") and closes it. Every waiting caller gets it.
    let mut refused: Option<(ErrorCode, String)> = None;
    let error = loop {
        let next = match reader.read_head().await {
            Ok(Some(head)) if head.body_len as usize >= POOLED_BODY => reader
                .read_rest_into(
                    &head,
                    |len| LARGE_BODIES.take(len),
                    |body| LARGE_BODIES.wrap(body),
                )
                .await
                .map(Some),
            Ok(Some(_)) => reader.read_frame().await,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match next {
            Ok(Some(frame)) if frame.request_id == 0 && frame.kind == MessageType::Error => {
                if let Ok(error) = frame.decode_header::<pb::ErrorHeader>("error") {
                    tracing::warn!(peer = %peer, error = %error.message, "the peer refused the connection");
                    refused = Some((ErrorCode::from_u32(error.code), error.message));
                }
            }
            Ok(Some(frame)) => {
                let waiter = pending.lock().unwrap().remove(&frame.request_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(frame));
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    closed.store(true, Ordering::Release);
    if let Some(error) = &error {
        tracing::warn!(peer = %peer, error = %error, "connection broke");
    }
    let waiters: Vec<_> = pending.lock().unwrap().drain().collect();
    for (_, waiter) in waiters {
        let error = match &refused {
            Some((code, message)) => ProtocolError::Remote {
                peer: peer.clone(),
                code: *code,
                message: message.clone(),
            },
            None => ProtocolError::Closed { peer: peer.clone() },
        };
        let _ = waiter.send(Err(error));
    }
}

/// One shared [`RpcClient`] per peer address, replaced when its connection breaks.
#[derive(Debug)]
pub struct RpcPool {
    clients: Mutex<HashMap<String, Arc<RpcClient>>>,
    limits: FrameLimits,
    connect_timeout: Duration,
    credentials: Option<Credentials>,
    tls: Option<TlsClient>,
}

impl RpcPool {
    pub fn new(limits: FrameLimits, connect_timeout: Duration) -> RpcPool {
        RpcPool {
            clients: Mutex::default(),
            limits,
            connect_timeout,
            credentials: None,
            tls: None,
        }
    }

    /// Authenticates every connection of the pool with `credentials` (`None`: no handshake,
    /// frames exactly as without auth).
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> RpcPool {
        self.credentials = credentials;
        self
    }

    /// Dials every connection of the pool with TLS (`None`: plain TCP).
    pub fn with_tls(mut self, tls: Option<TlsClient>) -> RpcPool {
        self.tls = tls;
        self
    }

    /// The open client for `addr`, connecting if there is none or the last one broke.
    pub async fn get(&self, addr: &str) -> ProtocolResult<Arc<RpcClient>> {
        if let Some(client) = self.clients.lock().unwrap().get(addr) {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let client = Arc::new(
            RpcClient::connect_with(
                addr,
                self.limits,
                self.connect_timeout,
                self.credentials.as_ref(),
                self.tls.as_ref(),
            )
            .await?,
        );
        self.clients
            .lock()
            .unwrap()
            .insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Sends `frame` to `addr` and waits for an answer of type `expected`.
    pub async fn call(
        &self,
        addr: &str,
        frame: OutFrame,
        expected: MessageType,
        timeout: Duration,
    ) -> ProtocolResult<Frame> {
        self.get(addr)
            .await?
            .call_expecting(frame, expected, timeout)
            .await
    }
}
