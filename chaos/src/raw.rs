//! Raw data-plane traffic for the memory scenarios, built from `sluice_protocol` directly: push
//! frames sent many at a time with every answer counted, connections that sit idle or stop
//! half-way through a frame, and a stalled "worker" that the master places replicas on but
//! that never reads what a primary forwards to it. In a secure run ([`crate::security`]) every
//! one of them speaks TLS and authenticates with the cluster secret, as a worker would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_protocol::auth::{client_handshake, server_handshake, Principal};
use sluice_protocol::batch;
use sluice_protocol::connection::{FrameReader, FrameWriter, OutFrame};
use sluice_protocol::frame::{FrameHead, FrameLimits, MessageType};
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::tls;
use sluice_protocol::transport::{ReadHalf, Stream, WriteHalf};
use sluice_protocol::{ErrorCode, ProtocolError, ShuffleKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::cluster::Run;
use crate::security::{Security, RAW_PRINCIPAL};

/// A push frame of one batch of `len` bytes (head included) for each `(partition, epoch)`
/// location, as a primary gets it from a writer. The batches differ only in their partition;
/// nothing reads them back.
pub(crate) fn push_frames(key: &ShuffleKey, locations: &[(u32, u32)], len: usize) -> Vec<OutFrame> {
    let raw: Vec<u8> = (0..len.saturating_sub(batch::BATCH_HEAD_LEN))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    locations
        .iter()
        .filter_map(|(partition, epoch)| {
            let tag = batch::BatchTag {
                partition: *partition,
                map_id: 0,
                attempt: 0,
                batch_id: 0,
            };
            let (_, body) = batch::encode(tag, &raw, batch::Codec::None).ok()?;
            let header = pb::PushHeader {
                shuffle: Some(key.to_pb()),
                slices: vec![pb::PushSlice {
                    partition: *partition,
                    epoch: *epoch,
                    length: body.len() as u32,
                }],
                role: pb::Role::Primary as i32,
            };
            Some(OutFrame::new(MessageType::PushData, 0, &header).with_body(vec![body]))
        })
        .collect()
}

/// A push frame with `slices` slices of length 0 to `(partition, epoch)` and an empty body: it
/// passes a check that the slices add up to the body.
pub(crate) fn zero_slices_frame(
    key: &ShuffleKey,
    (partition, epoch): (u32, u32),
    slices: usize,
) -> OutFrame {
    let header = pb::PushHeader {
        shuffle: Some(key.to_pb()),
        slices: vec![
            pb::PushSlice {
                partition,
                epoch,
                length: 0,
            };
            slices
        ],
        role: pb::Role::Primary as i32,
    };
    OutFrame::new(MessageType::PushMergedData, 0, &header)
}

/// How a batch of pushes was answered.
#[derive(Debug, Default, Clone)]
pub(crate) struct Answers {
    pub sent: u64,
    pub acked: u64,
    /// Error answers by code (`Busy` among them).
    pub refused: BTreeMap<String, u64>,
    /// No answer within the harness's limit: the worker held the push.
    pub unanswered: u64,
    /// The connection broke or could not be made.
    pub broken: u64,
    pub first_error: Option<String>,
}

impl Answers {
    fn add(&mut self, other: Answers) {
        self.sent += other.sent;
        self.acked += other.acked;
        for (code, n) in other.refused {
            *self.refused.entry(code).or_insert(0) += n;
        }
        self.unanswered += other.unanswered;
        self.broken += other.broken;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    fn record(&mut self, answer: Result<(), ProtocolError>) {
        self.sent += 1;
        let error = match answer {
            Ok(()) => {
                self.acked += 1;
                return;
            }
            Err(error) => error,
        };
        match &error {
            ProtocolError::Timeout { .. } => self.unanswered += 1,
            ProtocolError::Remote { code, .. } => {
                *self.refused.entry(format!("{code:?}")).or_insert(0) += 1
            }
            _ => self.broken += 1,
        }
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// `"1500 sent: 0 acked, refused {Busy: 3}, 1242 unanswered, 0 broken"`.
    pub fn summary(&self) -> String {
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|(code, n)| format!("{n} {code}"))
            .collect();
        format!(
            "{} sent: {} acked, {} refused ({}), {} unanswered, {} on broken connections{}",
            self.sent,
            self.acked,
            self.refused.values().sum::<u64>(),
            if refused.is_empty() {
                "none".to_string()
            } else {
                refused.join(", ")
            },
            self.unanswered,
            self.broken,
            self.first_error
                .as_ref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        )
    }
}

/// Sends `count` pushes to `addr`, cycling through `frames`, over `connections` connections
/// with up to `inflight` pushes in flight on each, every one bounded by `timeout`.
pub(crate) async fn send_pushes(
    run: &Run,
    addr: &str,
    frames: &[OutFrame],
    count: usize,
    connections: usize,
    inflight: usize,
    timeout: Duration,
) -> Answers {
    let next = Arc::new(AtomicU64::new(0));
    let frames: Arc<[OutFrame]> = frames.into();
    let mut tasks = JoinSet::new();
    for _ in 0..connections.max(1) {
        let (addr, next, frames) = (addr.to_string(), next.clone(), frames.clone());
        let run = run.clone();
        tasks.spawn(async move {
            let mut answers = Answers::default();
            let client = match run.rpc(&addr, RAW_PRINCIPAL, timeout).await {
                Ok(client) => Arc::new(client),
                Err(e) => {
                    answers.broken += 1;
                    answers.first_error = Some(e.to_string());
                    return answers;
                }
            };
            let mut calls = JoinSet::new();
            loop {
                while calls.len() < inflight.max(1) {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= count || frames.is_empty() {
                        break;
                    }
                    let (client, frame) = (client.clone(), frames[i % frames.len()].clone());
                    calls.spawn(async move {
                        // The call's own limit covers the wait for the answer; this one also
                        // covers queueing the frame.
                        let call = client.call_expecting(frame, MessageType::Ack, timeout);
                        match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
                            Ok(answer) => answer.map(|_| ()),
                            Err(_) => Err(ProtocolError::Timeout {
                                peer: client.peer().to_string(),
                                millis: timeout.as_millis() as u64,
                            }),
                        }
                    });
                }
                match calls.join_next().await {
                    Some(Ok(answer)) => answers.record(answer),
                    Some(Err(e)) => {
                        answers.broken += 1;
                        answers.first_error.get_or_insert(e.to_string());
                    }
                    None => return answers,
                }
            }
        });
    }
    let mut answers = Answers::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(one) = joined {
            answers.add(one);
        }
    }
    answers
}

/// Connections [`Loiterers::open`] has opening at once.
const CONNECTING: usize = 32;
/// How long opening one connection (TCP, and in a secure run TLS and the session) may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// A raw connection to the worker port `addr`, as the halves of a framed stream: plain, or in a
/// secure run with TLS and a session as `worker:chaos-raw` (every frame then tagged).
async fn connect(
    run: &Run,
    addr: &str,
) -> anyhow::Result<(FrameReader<ReadHalf>, FrameWriter<WriteHalf>)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let Some(security) = &run.security else {
        let (read, write) = Stream::Plain(tcp).split();
        return Ok((
            FrameReader::new(read, FrameLimits::default()),
            FrameWriter::new(write),
        ));
    };
    let tls = security.tls.connect(tls::host_of(addr), tcp).await?;
    let (read, write) = Stream::Client(Box::new(tls)).split();
    let (mut reader, mut writer) = (
        FrameReader::new(read, FrameLimits::default()),
        FrameWriter::new(write),
    );
    let credentials = security.credentials(Principal::Worker(RAW_PRINCIPAL.into()));
    let (sealer, opener) = client_handshake(
        &mut reader,
        &mut writer,
        &credentials.principal,
        &credentials.keys,
    )
    .await?;
    writer.set_sealer(sealer);
    reader.set_opener(opener);
    Ok((reader, writer))
}

/// Connections opened to a worker's port and left there: idle ones, and ones that sent the
/// head of a frame, its header and part of its body, then nothing more. Each is watched for the
/// worker closing it.
pub(crate) struct Loiterers {
    pub idle: usize,
    pub partial: usize,
    /// Connections that could not be opened.
    pub refused: usize,
    /// Partial ones whose bytes did not all go out within 2 s (the worker stopped reading).
    stuck: Arc<AtomicU64>,
    opened: Instant,
    closed: Arc<std::sync::Mutex<Vec<(bool, Duration)>>>,
    tasks: JoinSet<()>,
}

impl Loiterers {
    /// Opens `idle` idle connections and `partial` ones that announce a push of `body_len`
    /// bytes and send `sent` of them, to `addr`. In a secure run each first finishes its TLS
    /// and session handshakes (as `worker:chaos-raw`, which may push): a peer without the
    /// secret is closed by the handshake timeout, so only an authenticated one can loiter
    /// mid-frame, and that is what the worker's limits must still hold against.
    pub(crate) async fn open(
        run: &Run,
        addr: &str,
        key: &ShuffleKey,
        idle: usize,
        partial: usize,
        body_len: u32,
        sent: usize,
    ) -> Loiterers {
        let header = pb::PushHeader {
            shuffle: Some(key.to_pb()),
            slices: vec![pb::PushSlice {
                partition: 0,
                epoch: 0,
                length: body_len,
            }],
            role: pb::Role::Primary as i32,
        };
        let frame = OutFrame::new(MessageType::PushData, 1, &header);
        let head = FrameHead {
            kind: MessageType::PushData,
            flags: 0,
            request_id: 1,
            header_len: frame.header.len() as u32,
            body_len,
            crc: 0,
        };
        let header = frame.header.clone();
        let body: Arc<[u8]> = vec![0x5A; sent.min(body_len as usize)].into();
        let mut loiterers = Loiterers {
            idle: 0,
            partial: 0,
            refused: 0,
            stuck: Arc::default(),
            opened: Instant::now(),
            closed: Arc::default(),
            tasks: JoinSet::new(),
        };
        // Connections (and their handshakes) are opened a few dozen at a time, so opening
        // 2000 takes about as long as the slowest few, not the sum of them all.
        let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
        let mut connecting = JoinSet::new();
        for i in 0..idle + partial {
            let (run, addr, permits) = (run.clone(), addr.to_string(), permits.clone());
            connecting.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let opened = tokio::time::timeout(CONNECT_LIMIT, connect(&run, &addr)).await;
                (i >= idle, opened.ok().and_then(Result::ok))
            });
        }
        while let Some(joined) = connecting.join_next().await {
            let Ok((is_partial, Some((mut reader, mut writer)))) = joined else {
                loiterers.refused += 1;
                continue;
            };
            if is_partial {
                loiterers.partial += 1;
            } else {
                loiterers.idle += 1;
            }
            let (header, body, stuck) = (header.clone(), body.clone(), loiterers.stuck.clone());
            let (closed, opened) = (loiterers.closed.clone(), loiterers.opened);
            loiterers.tasks.spawn(async move {
                if is_partial {
                    let written = tokio::time::timeout(Duration::from_secs(2), async {
                        writer.write_head(&head, &header).await?;
                        writer.write_body(&body).await?;
                        writer.flush().await
                    })
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        stuck.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // `writer` stays alive until the worker closes: dropping it would send a FIN.
                while let Ok(Some(_)) = reader.read_frame().await {}
                drop(writer);
                closed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((is_partial, opened.elapsed()));
            });
        }
        loiterers
    }

    /// Partial connections whose bytes did not all go out within 2 s.
    pub fn stuck(&self) -> u64 {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Connections the worker closed so far: (idle, partial).
    pub fn closed(&self) -> (usize, usize) {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let partial = closed.iter().filter(|(p, _)| *p).count();
        (closed.len() - partial, partial)
    }

    /// Waits until every connection is closed or `limit` has passed since they were opened.
    pub async fn wait_closed(&self, limit: Duration) {
        let total = self.idle + self.partial;
        while self.opened.elapsed() < limit {
            let (idle, partial) = self.closed();
            if idle + partial >= total {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// When, after opening, the worker closed the last connection it closed.
    pub fn last_close(&self) -> Option<Duration> {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        closed.iter().map(|(_, at)| *at).max()
    }
}

impl Drop for Loiterers {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// A "worker" that registers with the master and heartbeats, accepts every connection,
/// answers the master's `Reserve` and `Destroy` (and refuses `Commit`), and never reads a
/// single byte of a push: a replica whose disk or process is wedged while its sockets stay up.
///
/// In a secure run it holds the cluster secret like a real worker: it registers and heartbeats
/// signed as `worker:<id>`, its ports speak TLS with the run's certificate, and every connection
/// must first finish the session handshake. A session of the master is then served; any other
/// (the primary forwarding its pushes, as `worker:<primary>`) is held and never read past the
/// handshake, so the primary's replica stalls exactly as in a plain run.
pub(crate) struct StalledWorker {
    pub id: String,
    tasks: JoinSet<()>,
}

impl StalledWorker {
    pub(crate) async fn start(run: &Run, master: &str, id: &str) -> anyhow::Result<StalledWorker> {
        let push = TcpListener::bind("127.0.0.1:0").await?;
        let fetch = TcpListener::bind("127.0.0.1:0").await?;
        let info = pb::WorkerInfo {
            id: id.to_string(),
            host: "127.0.0.1".into(),
            push_port: u32::from(push.local_addr()?.port()),
            fetch_port: u32::from(fetch.local_addr()?.port()),
            ..Default::default()
        };
        // A small healthy disk: the master takes it for a live worker, and placement (weighted
        // by free space) gives it replicas but few primaries.
        let disks = vec![pb::DiskStatus {
            path: "/stalled".into(),
            capacity_bytes: 1 << 30,
            free_bytes: 1 << 30,
            flush_latency_us: 0,
            healthy: true,
        }];
        let channel = run
            .master_channel(master, Duration::from_secs(5))
            .await
            .context("connecting the stalled worker to the master")?;
        let mut master = MasterClient::new(channel);
        let me = Principal::Worker(id.to_string());
        let register = pb::RegisterWorkerRequest {
            worker: Some(info.clone()),
            disks: disks.clone(),
            heartbeat_interval_ms: 300,
            ..pb::RegisterWorkerRequest::default()
        };
        master
            .register_worker(run.sign(&me, register.clone())?)
            .await
            .context("registering the stalled worker")?;
        let mut tasks = JoinSet::new();
        let beats = run.clone();
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let beat = pb::WorkerHeartbeatRequest {
                    worker_id: info.id.clone(),
                    disks: disks.clone(),
                    memory_budget_bytes: 1 << 30,
                    state: pb::WorkerState::Active as i32,
                    ..pb::WorkerHeartbeatRequest::default()
                };
                let Ok(beat) = beats.sign(&me, beat) else {
                    continue;
                };
                if let Ok(answer) = master.worker_heartbeat(beat).await {
                    if answer.into_inner().reregister {
                        if let Ok(register) = beats.sign(&me, register.clone()) {
                            let _ = master.register_worker(register).await;
                        }
                    }
                }
            }
        });
        let security = run.security.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = push.accept().await {
                match &security {
                    None => connections.spawn(serve_stalled(stream)),
                    Some(security) => {
                        connections.spawn(serve_stalled_secure(stream, security.clone()))
                    }
                };
            }
        });
        tasks.spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = fetch.accept().await {
                held.push(stream);
            }
        });
        Ok(StalledWorker {
            id: id.to_string(),
            tasks,
        })
    }
}

impl Drop for StalledWorker {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// One connection to the stalled worker: looks at the first frame's type without reading it.
/// The master's control frames are answered; a push connection is held and never read.
async fn serve_stalled(stream: TcpStream) {
    let mut head = [0u8; 6];
    let kind = loop {
        match stream.peek(&mut head).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n >= head.len() => break MessageType::from_u8(head[5]),
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    if matches!(
        kind,
        Some(MessageType::PushData | MessageType::PushMergedData)
    ) {
        // Never read: the primary's writes fill the socket buffers and then wait.
        std::future::pending::<()>().await;
    }
    let (read, write) = Stream::Plain(stream).split();
    answer_control(
        FrameReader::new(read, FrameLimits::default()),
        FrameWriter::new(write),
    )
    .await;
}

/// One connection to the stalled worker in a secure run: the TLS and session handshakes, then
/// a master's session is answered and any other held, never read again.
async fn serve_stalled_secure(stream: TcpStream, security: Arc<Security>) {
    let accept = security.tls_server.acceptor(&[]).accept(stream);
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), accept).await else {
        return;
    };
    let (read, write) = Stream::Server(Box::new(tls)).split();
    let mut reader = FrameReader::new(read, FrameLimits::default());
    let mut writer = FrameWriter::new(write);
    let handshake = server_handshake(&mut reader, &mut writer, &security.keyring);
    let Ok(Ok((principal, sealer, opener))) =
        tokio::time::timeout(Duration::from_secs(5), handshake).await
    else {
        return;
    };
    if !matches!(principal, Principal::Master(_)) {
        // Never read: the primary's writes fill the TLS and socket buffers and then wait.
        std::future::pending::<()>().await;
    }
    reader.set_opener(opener);
    writer.set_sealer(sealer);
    answer_control(reader, writer).await;
}

/// Answers the master's `Reserve` and `Destroy` with an ack and anything else with an error,
/// until the connection closes.
async fn answer_control(mut reader: FrameReader<ReadHalf>, mut writer: FrameWriter<WriteHalf>) {
    while let Ok(Some(frame)) = reader.read_frame().await {
        let id = frame.request_id;
        let answer = match frame.kind {
            MessageType::Reserve | MessageType::Destroy => {
                OutFrame::new(MessageType::Ack, id, &pb::Ack {})
            }
            other => OutFrame::error(
                id,
                ErrorCode::Unavailable,
                format!("the stalled worker does not serve {other:?}"),
            ),
        };
        if writer.write_frame(&answer).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
}

/// Raises this process's soft limit on open files to `want` (or its hard limit, if lower);
/// children started afterwards inherit it. Returns the soft and hard limits now in force.
pub(crate) fn raise_fd_limit(want: u64) -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit struct passed by pointer,
    // which lives on this stack frame for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        if limit.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(limit.rlim_max),
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur, limit.rlim_max)
}
