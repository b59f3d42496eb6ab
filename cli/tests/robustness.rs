//! Robustness against careless or hostile peers, with real sockets and real processes.
//!
//! - Garbage on a worker's push and fetch ports closes only that connection; a frame the port
//!   does not serve, or a hostile chunk request, gets an `Error` on a connection that stays usable.
//! - Fifty concurrent garbage connections do not stop a concurrent shuffle.
//! - `sluice local` prints one JSON ready line, serves `sluice bench --verify`, and exits 0 on
//!   SIGTERM, also with silent connections open (and so does an in-process master).
//! - `sluice worker` and `sluice master` refuse bad settings with an error naming the problem.
//! - A `sluice worker` process joins an in-process master, serves a shuffle, exits 0 on SIGTERM.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use bytes::Bytes;
use sluice::local::{LocalCluster, LocalOptions};
use sluice::records::{self, RecordId};
use sluice_client::{ClientConfig, ShuffleHandle, SluiceClient};
use sluice_protocol::connection::{FrameReader, OutFrame};
use sluice_protocol::frame::{self, Frame, FrameHead, FrameLimits, MessageType, HEAD_LEN};
use sluice_protocol::{pb, ErrorCode, ShuffleKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a server may take to answer, or to close a connection that sent garbage.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// How long a whole test shuffle (write, commit, read) may take.
const SHUFFLE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a process may take to get ready or to finish its work.
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);
/// How long a master, worker or `sluice local` may take to stop once told to.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// The frame body limit given to in-process workers: small, so announcing one byte more than
/// the limit, or exactly the limit, is cheap.
const MAX_BODY: u32 = 8 << 20;
const RECORDS_PER_MAP: u32 = 3000;

// ------------------------------------------------------------------------------------------
// Clusters and shuffles
// ------------------------------------------------------------------------------------------

async fn cluster(workers: usize, dir: &Path) -> LocalCluster {
    let mut options = LocalOptions::new(workers, dir);
    options.worker.max_frame_body = bytesize::ByteSize::b(u64::from(MAX_BODY));
    LocalCluster::start(options).await.expect("cluster starts")
}

/// Sizes vary so that batches cut records at many different offsets.
fn record_size(map: u32, seq: u32) -> usize {
    records::RECORD_HEAD + ((map * 31 + seq * 7) % 300) as usize
}

/// Writes `maps` maps of [`RECORDS_PER_MAP`] records each; record `seq` goes to partition
/// `seq % partitions`.
async fn write_maps(
    client: &SluiceClient,
    key: &ShuffleKey,
    maps: u32,
    partitions: u32,
) -> anyhow::Result<Arc<ShuffleHandle>> {
    let handle = client.register_shuffle(key, maps, partitions).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for map in 0..maps {
        let (client, handle) = (client.clone(), handle.clone());
        tasks.spawn(async move {
            let mut writer = client.writer(handle, map, 0)?;
            let mut record = Vec::new();
            for seq in 0..RECORDS_PER_MAP {
                record.clear();
                records::encode(&mut record, map, seq, record_size(map, seq));
                writer.write(seq % partitions, &record).await?;
            }
            writer.finish().await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(handle)
}

/// Reads every partition on its own and checks that each record written by [`write_maps`]
/// comes back exactly once, intact, from its own partition.
async fn read_verified(
    client: &SluiceClient,
    key: &ShuffleKey,
    maps: u32,
    partitions: u32,
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for partition in 0..partitions {
        let mut reader = client.reader(key, partition..partition + 1, None).await?;
        while let Some(block) = reader.next().await? {
            let mut problem = None;
            records::parse(&block, true, |id: RecordId, len, intact| {
                if problem.is_some() {
                    return;
                }
                if id.map >= maps || id.seq >= RECORDS_PER_MAP || id.seq % partitions != partition {
                    problem = Some(format!("{id:?} read from partition {partition}"));
                } else if !intact || len != record_size(id.map, id.seq) {
                    problem = Some(format!("{id:?} came back with different bytes"));
                } else if !seen.insert(id) {
                    problem = Some(format!("{id:?} read twice"));
                }
            })
            .map_err(|e| anyhow!("partition {partition}: malformed block: {e}"))?;
            if let Some(problem) = problem {
                bail!(problem);
            }
        }
    }
    let expected = maps as usize * RECORDS_PER_MAP as usize;
    ensure!(
        seen.len() == expected,
        "{} of {expected} records read",
        seen.len()
    );
    Ok(())
}

/// Writes a shuffle of application `app`, reads it back verified, and unregisters it.
async fn shuffle_round_trip(
    client: &SluiceClient,
    app: &str,
    maps: u32,
    partitions: u32,
) -> anyhow::Result<()> {
    let key = ShuffleKey::new(app, 0);
    let round_trip = async {
        write_maps(client, &key, maps, partitions)
            .await
            .context("writing")?;
        read_verified(client, &key, maps, partitions)
            .await
            .context("reading")?;
        client.unregister_shuffle(&key).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(SHUFFLE_DEADLINE, round_trip)
        .await
        .with_context(|| format!("shuffle {app} did not end within {SHUFFLE_DEADLINE:?}"))?
}

// ------------------------------------------------------------------------------------------
// Raw data-plane connections
// ------------------------------------------------------------------------------------------

fn wire(frame: &OutFrame) -> Vec<u8> {
    frame::encode_to_vec(
        frame.kind,
        frame.request_id,
        &frame.header,
        &frame.body,
        frame.with_crc,
    )
    .unwrap()
}

/// A well-formed frame of a kind the port serves (with a CRC): a 4 KiB push to the push port,
/// an open-stream request to the fetch port. Neither names a reserved location.
fn served_frame(port: &str) -> Vec<u8> {
    let shuffle = Some(ShuffleKey::new("nobody", 0).to_pb());
    if port == "push" {
        let header = pb::PushHeader {
            shuffle,
            slices: vec![pb::PushSlice {
                partition: 0,
                epoch: 0,
                length: 4096,
            }],
            ..Default::default()
        };
        let body = Bytes::from(vec![0xAB; 4096]);
        wire(&OutFrame::new(MessageType::PushData, 1, &header).with_body(vec![body]))
    } else {
        let header = pb::OpenStreamHeader {
            location: Some(pb::LocationRef {
                shuffle,
                ..Default::default()
            }),
            ..Default::default()
        };
        wire(&OutFrame::new(MessageType::OpenStream, 1, &header))
    }
}

/// A bare frame head (no header, no body, no CRC) of `kind` announcing `header_len` and
/// `body_len` bytes.
fn head(kind: MessageType, header_len: u32, body_len: u32) -> Vec<u8> {
    FrameHead {
        kind,
        flags: 0,
        request_id: 1,
        header_len,
        body_len,
        crc: 0,
    }
    .encode()
    .to_vec()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Byte strings after which a worker must close the connection. `served` is a valid frame for
/// the port (see [`served_frame`]).
fn garbage(served: &[u8], seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    let mut random = pseudo_random(4096, seed);
    random[0] = b'X'; // never the first byte of the magic
    let mut bad_crc = served.to_vec();
    bad_crc[24] ^= 0xFF;
    let mut unknown_type = head(MessageType::Ack, 0, 0);
    unknown_type[5] = 200;
    let mut bad_version = head(MessageType::Ack, 0, 0);
    bad_version[4] = frame::VERSION + 1;
    vec![
        ("random bytes", random),
        (
            "an http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "a body over the limit",
            head(MessageType::PushData, 0, MAX_BODY + 1),
        ),
        (
            "a header over the limit",
            head(MessageType::PushData, u32::MAX, 0),
        ),
        ("a bad crc", bad_crc),
        ("an unknown frame type", unknown_type),
        ("an unknown version", bad_version),
    ]
}

fn is_reset(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Connects and sends `bytes`; a reset while sending means the worker already hung up.
async fn send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if let Err(e) = stream.write_all(bytes).await {
        assert!(is_reset(&e), "sending to {addr}: {e}");
    }
    stream
}

/// Waits until the worker closes `stream` (end of stream or a reset).
async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: connection still open after {ANSWER_DEADLINE:?}"),
            Ok(Ok(0)) => return,
            // An answer before closing is allowed; keep reading until the close.
            Ok(Ok(_)) => {}
            Ok(Err(e)) if is_reset(&e) => return,
            Ok(Err(e)) => panic!("{what}: {e}"),
        }
    }
}

/// Whether the worker has neither closed `stream` nor sent anything on it (nothing is consumed).
fn open_and_silent(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: the fd belongs to `stream`, which is borrowed for the whole call, and `byte` is a
    // writable one-byte buffer that outlives it.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// A connection speaking frames: requests out, answers in.
struct FrameConn {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl FrameConn {
    async fn open(addr: &str) -> FrameConn {
        let (read_half, writer) = TcpStream::connect(addr).await.unwrap().into_split();
        FrameConn {
            reader: FrameReader::new(read_half, FrameLimits::default()),
            writer,
        }
    }

    /// Sends `request` and returns the worker's next frame.
    async fn call(&mut self, request: &OutFrame, what: &str) -> Frame {
        self.writer.write_all(&wire(request)).await.unwrap();
        tokio::time::timeout(ANSWER_DEADLINE, self.reader.read_frame())
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("{what}: malformed answer: {e}"))
            .unwrap_or_else(|| panic!("{what}: the worker closed the connection"))
    }

    /// Sends `request` and checks the answer is an `InvalidRequest` error for it.
    async fn expect_invalid(&mut self, request: OutFrame, what: &str) {
        let answer = self.call(&request, what).await;
        assert_eq!(
            answer.kind,
            MessageType::Error,
            "{what}: answered {answer:?}"
        );
        assert_eq!(answer.request_id, request.request_id, "{what}");
        let error: pb::ErrorHeader = answer.decode_header("error").unwrap();
        assert_eq!(
            ErrorCode::from_u32(error.code),
            ErrorCode::InvalidRequest,
            "{what}: {}",
            error.message
        );
    }
}

/// `("push" | "fetch", address)` of every port of every worker.
fn ports(cluster: &LocalCluster) -> Vec<(&'static str, String)> {
    cluster
        .workers()
        .iter()
        .flat_map(|w| [("push", w.push_addr()), ("fetch", w.fetch_addr())])
        .collect()
}

/// Connections to a master that never finish a request: one silent from the start, one that
/// stops half-way through the HTTP/2 preface.
fn silent_master_connections(master: SocketAddr) -> Vec<std::net::TcpStream> {
    let idle = std::net::TcpStream::connect(master).unwrap();
    let mut preface = std::net::TcpStream::connect(master).unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    vec![idle, preface]
}

/// Half a frame on each of the given worker ports (`("push" | "fetch", address)`), left open.
fn half_frames(ports: &[(&'static str, SocketAddr)]) -> Vec<std::net::TcpStream> {
    ports
        .iter()
        .map(|(port, addr)| {
            let frame = served_frame(port);
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(&frame[..frame.len() / 2]).unwrap();
            stream
        })
        .collect()
}

/// Waits until a fresh connection to `master` is served: the master's accept loop takes
/// connections in order, so every connection opened before has been accepted too.
async fn assert_serving(master: SocketAddr) {
    let client = SluiceClient::new(ClientConfig::new(master.to_string())).unwrap();
    tokio::time::timeout(ANSWER_DEADLINE, client.cluster_status())
        .await
        .expect("master answers in time")
        .expect("master answers");
}

// ------------------------------------------------------------------------------------------
// Processes
// ------------------------------------------------------------------------------------------

/// A `sluice` command line that inherits none of the test's own `SLUICE_*` variables.
fn sluice(args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args).env("RUST_LOG", "info");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SLUICE_") {
            command.env_remove(name);
        }
    }
    command
}

/// A child process, killed if still running when dropped. Its stdout lines arrive on a
/// channel; its stderr goes to `<name>.log` in the given directory.
struct Process {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap());
        let mut child = command.spawn().expect("spawning sluice");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            name: name.to_string(),
            child,
            lines,
            log,
        }
    }

    /// Its stderr so far, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(PROCESS_DEADLINE)
            .unwrap_or_else(|e| panic!("{}: no stdout line ({e})\n{}", self.name, self.log()))
    }

    /// The stdout lines not taken yet, up to the end of the stream.
    fn rest_of_stdout(&self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.lines.recv_timeout(PROCESS_DEADLINE) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
                Err(e) => panic!("{}: stdout still open ({e})", self.name),
            }
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit; failing the test (and killing it) after the deadline.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn terminate(&mut self) {
        assert!(
            self.exited().is_none(),
            "{} exited before SIGTERM\n{}",
            self.name,
            self.log()
        );
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) takes no pointers; `pid` is our child, not yet reaped, so not reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a `sluice` command that must fail; returns its stderr. A command that is accepted
/// would run forever: the deadline of [`Process::wait`] turns that into a failure.
fn config_error(name: &str, command: Command, dir: &Path) -> String {
    let mut process = Process::spawn(name, command, dir);
    let status = process.wait(PROCESS_DEADLINE);
    let stderr = process.log();
    assert!(
        status.code().is_some_and(|code| code != 0),
        "{name}: {status}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    stderr
}

fn loopback(value: &serde_json::Value, what: &str) -> SocketAddr {
    let addr: SocketAddr = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
        .parse()
        .unwrap_or_else(|e| panic!("{what} {value}: {e}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{what} {addr}");
    addr
}

fn keys(value: &serde_json::Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_its_connection_and_unserved_frames_get_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(2, dir.path()).await;
    let client = cluster.client().unwrap();

    // Half a frame on every port, left open for the whole test.
    let mut held = Vec::new();
    for (port, addr) in ports(&cluster) {
        let frame = served_frame(port);
        held.push((
            format!("{port} {addr}"),
            send(&addr, &frame[..frame.len() / 2]).await,
        ));
    }

    for (i, (port, addr)) in ports(&cluster).into_iter().enumerate() {
        let served = served_frame(port);
        for (name, bytes) in garbage(&served, i as u64) {
            let mut stream = send(&addr, &bytes).await;
            assert_closed(&mut stream, &format!("{name} on {port} {addr}")).await;
        }
        // A peer that stops half-way (or at once) and closes its side is closed too.
        for cut in [0, HEAD_LEN / 2, HEAD_LEN, served.len() / 2] {
            let mut stream = send(&addr, &served[..cut]).await;
            stream.shutdown().await.unwrap();
            let what = format!("{cut} bytes then a close on {port} {addr}");
            assert_closed(&mut stream, &what).await;
        }
    }

    // Well-formed frames the port does not serve, or with headers it cannot use, are refused
    // with an error on a connection that stays open: each answer below comes on one connection.
    let bad_app = Some(ShuffleKey::new("..", 0).to_pb());
    let garbage_header = |kind: MessageType, id: u64| OutFrame {
        kind,
        request_id: id,
        header: Bytes::from_static(&[0xFF; 8]),
        body: Vec::new(),
        with_crc: true,
        flags: 0,
    };
    for worker in cluster.workers() {
        let mut push = FrameConn::open(&worker.push_addr()).await;
        let what = format!("push port of {}", worker.id);
        let open_stream = pb::OpenStreamHeader::default();
        for (id, kind) in [
            (10, MessageType::OpenStream),
            (11, MessageType::FetchChunk),
            (12, MessageType::Ack),
            (13, MessageType::Error),
            (14, MessageType::StreamOpened),
            (15, MessageType::ChunkData),
            (16, MessageType::Committed),
        ] {
            let request = OutFrame::new(kind, id, &open_stream);
            push.expect_invalid(request, &format!("{kind:?} on the {what}"))
                .await;
        }
        push.expect_invalid(
            garbage_header(MessageType::PushData, 17),
            &format!("an undecodable push header on the {what}"),
        )
        .await;
        push.expect_invalid(
            garbage_header(MessageType::Reserve, 18),
            &format!("an undecodable reserve header on the {what}"),
        )
        .await;
        let reserve = pb::ReserveHeader {
            shuffle: bad_app.clone(),
            locations: vec![pb::LocationSpec::default()],
        };
        let request = OutFrame::new(MessageType::Reserve, 19, &reserve);
        push.expect_invalid(request, &format!("reserve for app \"..\" on the {what}"))
            .await;
        let destroy = pb::DestroyHeader {
            app_id: "../x".into(),
            shuffle_id: None,
        };
        let request = OutFrame::new(MessageType::Destroy, 20, &destroy);
        push.expect_invalid(request, &format!("destroy of app \"../x\" on the {what}"))
            .await;

        let mut fetch = FrameConn::open(&worker.fetch_addr()).await;
        let what = format!("fetch port of {}", worker.id);
        for (id, kind) in [
            (30, MessageType::PushData),
            (31, MessageType::PushMergedData),
            (32, MessageType::Reserve),
            (33, MessageType::Commit),
            (34, MessageType::Ack),
            (35, MessageType::Error),
            (36, MessageType::ChunkData),
        ] {
            let request = OutFrame::new(kind, id, &pb::Ack {});
            fetch
                .expect_invalid(request, &format!("{kind:?} on the {what}"))
                .await;
        }
        fetch
            .expect_invalid(
                garbage_header(MessageType::OpenStream, 37),
                &format!("an undecodable open stream header on the {what}"),
            )
            .await;
        let escape = pb::OpenStreamHeader {
            location: Some(pb::LocationRef {
                shuffle: bad_app.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = OutFrame::new(MessageType::OpenStream, 38, &escape);
        fetch
            .expect_invalid(request, &format!("open stream of app \"..\" on the {what}"))
            .await;
    }

    // A shuffle while the half frames are still open. Between its writes and its reads, a
    // Destroy of its application arrives on every fetch port: it must be refused, not obeyed.
    let key = ShuffleKey::new("robust", 0);
    let (maps, partitions) = (4, 6);
    write_maps(&client, &key, maps, partitions).await.unwrap();
    for worker in cluster.workers() {
        let destroy = pb::DestroyHeader {
            app_id: "robust".into(),
            shuffle_id: None,
        };
        let request = OutFrame::new(MessageType::Destroy, 40, &destroy);
        let what = format!("destroy on the fetch port of {}", worker.id);
        FrameConn::open(&worker.fetch_addr())
            .await
            .expect_invalid(request, &what)
            .await;
    }
    read_verified(&client, &key, maps, partitions)
        .await
        .unwrap();
    for (what, stream) in &held {
        // Otherwise the shuffle above did not run beside an open garbage connection.
        assert!(open_and_silent(stream), "half frame on {what} was closed");
    }
    drop(held);

    shuffle_round_trip(&client, "after-garbage", maps, partitions)
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chunk_requests_for_committed_data_get_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(1, dir.path()).await;
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("hostile-fetch", 0);
    let handle = write_maps(&client, &key, 2, 2).await.unwrap();
    // Reading waits for the commit, so partition 0 is a committed file after this.
    read_verified(&client, &key, 2, 2).await.unwrap();
    let location = pb::LocationRef {
        shuffle: Some(key.to_pb()),
        partition: 0,
        epoch: handle.locations.epoch[0],
        role: pb::Role::Primary as i32,
    };
    let mut fetch = FrameConn::open(&cluster.workers()[0].fetch_addr()).await;
    let open = pb::OpenStreamHeader {
        location: Some(location.clone()),
        ..Default::default()
    };
    let answer = fetch
        .call(&OutFrame::new(MessageType::OpenStream, 1, &open), "open")
        .await;
    assert_eq!(answer.kind, MessageType::StreamOpened, "{answer:?}");
    let opened: pb::StreamOpenedHeader = answer.decode_header("stream opened").unwrap();
    let file = opened.file_length;
    assert!(file > 0 && !opened.chunks.is_empty(), "{opened:?}");

    let fetch_chunk = |id: u64, ranges: Vec<(u64, u64)>| {
        let ranges = ranges
            .into_iter()
            .map(|(offset, length)| pb::Range { offset, length })
            .collect();
        let header = pb::FetchChunkHeader {
            location: Some(location.clone()),
            chunk: Some(pb::Chunk { ranges }),
        };
        OutFrame::new(MessageType::FetchChunk, id, &header)
    };
    let whole = fetch
        .call(&fetch_chunk(2, vec![(0, file)]), "the whole file")
        .await;
    assert_eq!(
        (whole.kind, whole.body.len() as u64),
        (MessageType::ChunkData, file)
    );

    let over_limit = (u64::from(MAX_BODY) / file + 1) as usize;
    let cases = [
        ("a range past the end", vec![(0, file + 1)]),
        ("a range at offset u64::MAX", vec![(u64::MAX, 1)]),
        ("ranges above the frame limit", vec![(0, file); over_limit]),
        (
            "lengths whose sum overflows u64",
            vec![(0, u64::MAX), (0, 2)],
        ),
    ];
    for (id, (what, ranges)) in (10..).zip(cases) {
        fetch.expect_invalid(fetch_chunk(id, ranges), what).await;
    }
    let again = fetch.call(&fetch_chunk(20, vec![(0, file)]), "again").await;
    assert_eq!(again.body, whole.body);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_garbage_connections_do_not_stop_a_concurrent_shuffle() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(2, dir.path()).await;
    let client = cluster.client().unwrap();
    let targets = ports(&cluster);
    let shuffle_done = CancellationToken::new();

    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..50usize {
        let (port, addr) = targets[i % targets.len()].clone();
        let shuffle_done = shuffle_done.clone();
        attackers.spawn(async move {
            let served = served_frame(port);
            match i % 5 {
                // Held open until the shuffle ends: a head announcing a body of exactly the
                // limit followed by a few bytes of it, or half a frame.
                0 | 1 => {
                    let mut bytes = served[..served.len() / 2].to_vec();
                    if i % 5 == 0 {
                        bytes = head(MessageType::PushData, 0, MAX_BODY);
                        bytes.extend_from_slice(&[0; 100]);
                    }
                    let _stream = send(&addr, &bytes).await;
                    shuffle_done.cancelled().await;
                    1
                }
                // Garbage again and again, each connection closed by the worker, until the
                // shuffle ends (a cap keeps a stuck shuffle from turning into a flood).
                _ => {
                    let cases = garbage(&served, i as u64);
                    let mut connections = 0;
                    while connections < 1000 && !shuffle_done.is_cancelled() {
                        let (name, bytes) = &cases[(i + connections) % cases.len()];
                        let mut stream = send(&addr, bytes).await;
                        assert_closed(&mut stream, &format!("{name} on {port} {addr}")).await;
                        connections += 1;
                    }
                    connections
                }
            }
        });
    }

    let shuffled = shuffle_round_trip(&client, "under-attack", 8, 12).await;
    shuffle_done.cancel();
    let mut connections = 0;
    while let Some(done) = attackers.join_next().await {
        connections += done.expect("attacker saw what it expected");
    }
    shuffled.unwrap();
    assert!(connections >= 50, "only {connections} garbage connections");
    cluster.shutdown().await.unwrap();
}

#[test]
fn sluice_local_serves_a_verified_bench_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let local_args = [OsStr::new("local"), "--workers".as_ref(), "2".as_ref()];
    let mut command = sluice(local_args);
    command.arg("--data-dir").arg(&data_dir);
    let mut local = Process::spawn("local", command, dir.path());

    let ready_line = local.next_line();
    let ready: serde_json::Value = serde_json::from_str(&ready_line)
        .unwrap_or_else(|e| panic!("ready line {ready_line:?}: {e}"));
    assert_eq!(
        keys(&ready),
        BTreeSet::from(["master", "masters", "admin", "status_page", "workers"]),
        "{ready}"
    );
    let status_page = ready["status_page"].as_str().expect("status_page is a URL");
    assert!(status_page.starts_with("http://127.0.0.1:"), "{ready}");
    let master = loopback(&ready["master"], "master");
    let workers = ready["workers"].as_array().expect("workers is an array");
    assert_eq!(workers.len(), 2, "{ready}");
    let mut ids = HashSet::new();
    let mut addrs = HashSet::from([master]);
    for worker in workers {
        assert_eq!(
            keys(worker),
            BTreeSet::from(["id", "push", "fetch", "admin"]),
            "{worker}"
        );
        let id = worker["id"].as_str().expect("id is a string");
        assert!(!id.is_empty() && ids.insert(id.to_string()), "{ready}");
        for port in ["push", "fetch", "admin"] {
            let addr = loopback(&worker[port], port);
            assert!(addrs.insert(addr), "{addr} appears twice in {ready}");
            std::net::TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("{port} port {addr} of {id}: {e}"));
        }
    }

    let master = master.to_string();
    let bench_args = [
        "bench",
        "--master",
        &master,
        "--maps",
        "4",
        "--partitions",
        "8",
        "--bytes-per-map",
        "1MiB",
        "--verify",
        "--loopback-bytes",
        "0",
    ];
    let mut bench = Process::spawn("bench", sluice(bench_args), dir.path());
    let status = bench.wait(PROCESS_DEADLINE);
    let stdout = bench.rest_of_stdout();
    assert!(
        status.success(),
        "bench: {status}\n{stdout:?}\n{}",
        bench.log()
    );
    let last = stdout.last().expect("bench printed a report");
    let report: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("report {last:?}: {e}"));
    let field = |name: &str| {
        report[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    // 1 MiB of 100-byte records per map.
    assert_eq!(
        field("records_written"),
        4 * (1u64 << 20).div_ceil(100),
        "{report}"
    );
    assert_eq!(field("records_read"), field("records_written"), "{report}");
    assert_eq!(field("read_bytes"), field("write_bytes"), "{report}");
    assert_eq!((field("lost"), field("duplicated")), (0, 0), "{report}");
    assert_eq!((field("corrupted"), field("workers")), (0, 2), "{report}");
    assert_eq!(report["verified"], true, "{report}");

    local.terminate();
    let status = local.wait(STOP_DEADLINE);
    assert_eq!(status.code(), Some(0), "local: {status}\n{}", local.log());
    assert_eq!(
        local.rest_of_stdout(),
        Vec::<String>::new(),
        "sluice local printed more than its ready line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_local_exits_on_sigterm_while_silent_connections_are_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = sluice(["local", "--workers", "1"]);
    command.arg("--data-dir").arg(dir.path().join("data"));
    let mut local = Process::spawn("local", command, dir.path());
    let ready: serde_json::Value = serde_json::from_str(&local.next_line()).unwrap();
    let master = loopback(&ready["master"], "master");
    let worker = &ready["workers"][0];
    let ports = [
        ("push", loopback(&worker["push"], "push")),
        ("fetch", loopback(&worker["fetch"], "fetch")),
    ];
    let mut held = silent_master_connections(master);
    held.extend(half_frames(&ports));
    assert_serving(master).await;

    local.terminate();
    let status = local.wait(STOP_DEADLINE);
    assert_eq!(status.code(), Some(0), "local: {status}\n{}", local.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_stops_while_silent_connections_are_open() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let config = sluice_master::MasterConfig {
        data_dir: dir.path().to_path_buf(),
        ..sluice_master::MasterConfig::default()
    };
    let master = tokio::spawn(sluice_master::run(config, listener, stop.clone()));
    let _held = silent_master_connections(addr);
    assert_serving(addr).await;

    stop.cancel();
    tokio::time::timeout(STOP_DEADLINE, master)
        .await
        .unwrap_or_else(|_| panic!("master still running {STOP_DEADLINE:?} after shutdown"))
        .unwrap()
        .unwrap();
}

#[test]
fn bad_settings_are_refused_with_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Settings that keep a worker off fixed ports and system directories, should it start.
    let harmless = |command: &mut Command| {
        command
            .args([
                "--push-listen",
                "127.0.0.1:0",
                "--fetch-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--master", "127.0.0.1:1", "--data-dirs"])
            .arg(&data);
    };

    let mut command = sluice(["worker", "--no-such-key", "1"]);
    harmless(&mut command);
    let stderr = config_error("worker-flag", command, dir.path());
    assert!(stderr.contains("no-such-key"), "{stderr}");

    let mut command = sluice(["worker"]);
    harmless(&mut command);
    command.env("SLUICE_WORKER_BOGUS", "1");
    let stderr = config_error("worker-env", command, dir.path());
    assert!(stderr.contains("SLUICE_WORKER_BOGUS"), "{stderr}");

    let file = dir.path().join("worker.toml");
    std::fs::write(&file, "id = \"w9\"\nmemroy_budget = \"1GiB\"\n").unwrap();
    let mut command = sluice(["worker", "--config"]);
    command.arg(&file);
    harmless(&mut command);
    let stderr = config_error("worker-file", command, dir.path());
    assert!(stderr.contains("memroy_budget"), "{stderr}");

    let mut command = sluice(["worker", "--memory-budget", "lots"]);
    harmless(&mut command);
    let stderr = config_error("worker-size", command, dir.path());
    assert!(
        stderr.contains("lots") && stderr.contains("memory_budget"),
        "{stderr}"
    );

    let args = ["master", "--listen", "127.0.0.1:0", "--worker-timeout"];
    let mut command = sluice(args);
    command.arg("nonsense");
    let stderr = config_error("master-duration", command, dir.path());
    assert!(
        stderr.contains("nonsense") && stderr.contains("worker_timeout"),
        "{stderr}"
    );

    let mut command = sluice(args);
    command.arg("0s");
    let stderr = config_error("master-zero", command, dir.path());
    assert!(stderr.contains("worker_timeout"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_joins_a_master_serves_a_shuffle_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let master_addr = listener.local_addr().unwrap().to_string();
    let stop_master = CancellationToken::new();
    let config = sluice_master::MasterConfig {
        data_dir: dir.path().join("master"),
        ..sluice_master::MasterConfig::default()
    };
    let master = tokio::spawn(sluice_master::run(config, listener, stop_master.clone()));

    let mut command = sluice(["worker", "--master", &master_addr, "--id", "w1"]);
    command
        .args([
            "--push-listen",
            "127.0.0.1:0",
            "--fetch-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--heartbeat-interval", "200ms", "--memory-budget", "256MiB"])
        .arg("--data-dirs")
        .arg(dir.path().join("data"));
    let mut worker = Process::spawn("worker", command, dir.path());

    let client = SluiceClient::new(ClientConfig::new(master_addr)).unwrap();
    let deadline = Instant::now() + PROCESS_DEADLINE;
    let info = loop {
        let status = client.cluster_status().await;
        let w1 = status
            .iter()
            .flat_map(|s| &s.workers)
            .find(|w| w.alive && w.worker.as_ref().is_some_and(|info| info.id == "w1"));
        if let Some(w1) = w1 {
            break w1.worker.clone().unwrap();
        }
        if let Some(status) = worker.exited() {
            panic!(
                "worker exited ({status}) before registering\n{}",
                worker.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "w1 not alive after {PROCESS_DEADLINE:?} ({status:?})\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(info.host, "127.0.0.1");
    assert!(info.push_port != 0 && info.fetch_port != 0 && info.push_port != info.fetch_port);

    shuffle_round_trip(&client, "process-worker", 4, 6)
        .await
        .unwrap();

    // Half-sent frames do not hold the worker up either.
    let ip = std::net::Ipv4Addr::LOCALHOST;
    let _held = half_frames(&[
        ("push", (ip, info.push_port as u16).into()),
        ("fetch", (ip, info.fetch_port as u16).into()),
    ]);
    worker.terminate();
    let status = worker.wait(STOP_DEADLINE);
    assert_eq!(status.code(), Some(0), "worker: {status}\n{}", worker.log());
    stop_master.cancel();
    master.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_of_damaged_or_misrouted_batches_are_refused_and_the_worker_keeps_serving() {
    use sluice_protocol::batch::{self, BatchTag};
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(1, dir.path()).await;
    let client = SluiceClient::new(ClientConfig {
        replication: 1,
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let key = ShuffleKey::new("damaged-pushes", 0);
    client.register_shuffle(&key, 1, 2).await.unwrap();
    let batch_for = |partition: u32| {
        let tag = BatchTag {
            partition,
            map_id: 0,
            attempt: 0,
            batch_id: 0,
        };
        batch::encode(tag, &[7u8; 500], batch::Codec::None)
            .unwrap()
            .1
    };
    let push = |id: u64, slices: Vec<(u32, u32)>, body: Vec<Bytes>| {
        let header = pb::PushHeader {
            shuffle: Some(key.to_pb()),
            slices: slices
                .into_iter()
                .map(|(partition, length)| pb::PushSlice {
                    partition,
                    epoch: 0,
                    length,
                })
                .collect(),
            role: pb::Role::Primary as i32,
        };
        OutFrame::new(MessageType::PushData, id, &header).with_body(body)
    };
    let good = batch_for(0);
    let mut flipped = good.to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    let len = good.len() as u32;
    let mut conn = FrameConn::open(&cluster.workers()[0].push_addr()).await;
    // A batch whose own CRC fails (the frame's CRC is computed over the damaged bytes).
    conn.expect_invalid(
        push(1, vec![(0, len)], vec![flipped.into()]),
        "a damaged batch",
    )
    .await;
    // A whole batch of partition 1 pushed to partition 0.
    conn.expect_invalid(
        push(2, vec![(0, len)], vec![batch_for(1)]),
        "a misrouted batch",
    )
    .await;
    // A push without a frame CRC.
    conn.expect_invalid(
        push(3, vec![(0, len)], vec![good.clone()]).without_crc(),
        "a push without a frame checksum",
    )
    .await;
    // Empty slices beside a whole one (they would add up to the body).
    let mut slices = vec![(0, len)];
    slices.extend((0..10_000).map(|_| (1, 0)));
    conn.expect_invalid(push(4, slices, vec![good.clone()]), "empty slices")
        .await;
    // The same connection still takes a good push, and a full shuffle still goes through.
    let answer = conn
        .call(&push(5, vec![(0, len)], vec![good]), "a good push")
        .await;
    assert_eq!(answer.kind, MessageType::Ack, "{answer:?}");
    let other = ShuffleKey::new("damaged-pushes", 1);
    let handle = client.register_shuffle(&other, 1, 4).await.unwrap();
    let mut writer = client.writer(handle, 0, 0).unwrap();
    for seq in 0..100u32 {
        writer.write(seq % 4, &seq.to_be_bytes()).await.unwrap();
    }
    writer.finish().await.unwrap();
    let mut reader = client.reader(&other, 0..4, None).await.unwrap();
    let mut bytes = 0;
    while let Some(block) = reader.next().await.unwrap() {
        bytes += block.len();
    }
    assert_eq!(bytes, 400);
    cluster.shutdown().await.unwrap();
}
