//! Disk write engines: how the worker gets bytes onto a disk.
//!
//! Every disk gets one engine, and every engine owns one dedicated OS thread named
//! `sluice-flush-<disk>`. Tokio tasks never block on disk I/O; they hand a [`WriteRequest`] to
//! [`IoEngine::submit`] and await the returned oneshot receiver.
//!
//! ```text
//! tokio task ── submit(WriteRequest) ──► channel ──► engine thread ──► disk
//!     ▲                                                    │
//!     └─── oneshot: WriteOutcome { request, result } ◄─────┘
//! ```
//!
//! The engine takes ownership of the buffers for as long as the kernel may read them and hands
//! them back in the [`WriteOutcome`], so the caller can reuse or drop them.
//!
//! - [`uring::UringEngine`] (`io_uring`): one ring per disk. Each buffer becomes one write SQE at
//!   its explicit file offset; many requests are in flight at once, short writes are resubmitted
//!   and a request completes when all its buffers are written or on its first error.
//! - [`sync::SyncEngine`] (`sync`): the portable fallback for kernels or sandboxes without
//!   `io_uring`. Positional writes (`pwrite`), one request at a time, in submission order.
//! - [`faulty::FaultyEngine`]: wraps another engine and fails writes on demand (`ENOSPC` after a
//!   byte budget, `EIO`), to simulate a full or broken disk in tests.
//!
//! [`open_engine`] picks the engine for a disk ([`EngineChoice::Auto`] probes `io_uring` first).
//! Dropping the last handle to an engine closes its channel; the thread finishes the requests
//! already queued and exits, and the drop waits for it (so drop the last handle off the async
//! runtime, e.g. in `spawn_blocking`, when writes may still be in flight).
//!
//! The channel is unbounded: callers bound the bytes they have in flight themselves.

pub mod faulty;
pub mod sync;
pub mod uring;

use std::{fs::File, io, sync::Arc};

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use self::{faulty::FaultyEngine, sync::SyncEngine, uring::UringEngine};

/// Several buffers written back to back into `file` starting at `offset`.
pub struct WriteRequest {
    pub file: Arc<File>,
    pub offset: u64,
    pub bufs: Vec<Bytes>,
}

impl WriteRequest {
    /// Total bytes across all buffers.
    pub fn len(&self) -> u64 {
        self.bufs.iter().map(|b| b.len() as u64).sum()
    }

    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.bufs.iter().all(Bytes::is_empty)
    }

    /// Rejects ranges no positional write can address (`pwrite` takes an `off_t`, and for
    /// `io_uring` an offset of `u64::MAX` would mean "the current file position").
    fn check_range(&self) -> io::Result<()> {
        let fits = self
            .offset
            .checked_add(self.len())
            .is_some_and(|end| end <= i64::MAX as u64);
        if fits {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write range beyond the largest file offset",
            ))
        }
    }
}

impl std::fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequest")
            .field("file", &self.file)
            .field("offset", &self.offset)
            .field("bufs", &self.bufs.len())
            .field("len", &self.len())
            .finish()
    }
}

/// The request handed back (buffers included) with the result.
#[derive(Debug)]
pub struct WriteOutcome {
    pub request: WriteRequest,
    pub result: io::Result<()>,
}

/// The engine actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Uring,
    Sync,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Uring => "io_uring",
            EngineKind::Sync => "sync",
        }
    }
}

/// The engine asked for in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// `io_uring` if this machine allows it, else `sync`.
    #[default]
    Auto,
    /// `io_uring` or fail.
    Uring,
    /// Positional writes from a plain thread.
    Sync,
}

pub trait IoEngine: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> EngineKind;

    /// Queues the write. Never blocks the caller (callers are tokio tasks) and never panics. The
    /// receiver yields the outcome; if the engine has shut down, the receiver errors (sender
    /// dropped) and the caller treats that as an I/O error.
    fn submit(&self, request: WriteRequest) -> oneshot::Receiver<WriteOutcome>;
}

/// Checks whether io_uring can be used here (kernel support, not blocked by seccomp,
/// `io_uring_disabled` sysctl...): really creates a small ring and runs one no-op through it.
/// Never panics.
pub fn probe_uring() -> io::Result<()> {
    uring::probe()
}

/// Opens the engine for one disk. `name` names the thread (`sluice-flush-<name>`).
///
/// `Auto` uses `io_uring` if [`probe_uring`] succeeds, else `sync`, and logs the choice. A forced
/// `Uring` that is unavailable returns the error. `Sync` always works (short of thread creation
/// failing).
pub fn open_engine(choice: EngineChoice, name: &str) -> io::Result<Arc<dyn IoEngine>> {
    let engine: Arc<dyn IoEngine> = match choice {
        EngineChoice::Sync => Arc::new(SyncEngine::new(name)?),
        EngineChoice::Uring => match probe_uring().and_then(|()| UringEngine::new(name)) {
            Ok(engine) => Arc::new(engine),
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!(
                        "io_uring write engine requested for disk {name} but unavailable: {err}"
                    ),
                ))
            }
        },
        EngineChoice::Auto => match probe_uring().and_then(|()| UringEngine::new(name)) {
            Ok(engine) => Arc::new(engine),
            Err(err) => {
                warn!(disk = name, error = %err, "io_uring unavailable, falling back to sync writes");
                Arc::new(SyncEngine::new(name)?)
            }
        },
    };
    info!(disk = name, engine = engine.kind().as_str(), choice = ?choice, "write engine selected");
    Ok(engine)
}

/// Name of the engine thread for disk `name` (without NULs, which would make spawning panic).
fn thread_name(name: &str) -> String {
    format!("sluice-flush-{name}").replace('\0', "?")
}

/// Sends the outcome; a caller that stopped waiting is not an error.
fn reply(tx: oneshot::Sender<WriteOutcome>, request: WriteRequest, result: io::Result<()>) {
    let _ = tx.send(WriteOutcome { request, result });
}

#[cfg(test)]
mod tests {
    //! One suite, run against every engine (see `engine_tests!` at the bottom).

    use std::{
        fs::{self, OpenOptions},
        path::Path,
        time::Duration,
    };

    use tokio::time::timeout;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    /// Deterministic xorshift; enough randomness for sizes and contents.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self, len: usize) -> Bytes {
            let seed = self.next();
            (0..len)
                .map(|i| (seed.rotate_left(i as u32 % 64) as u8) ^ (i as u8))
                .collect::<Vec<u8>>()
                .into()
        }
    }

    fn create(path: &Path) -> Arc<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        Arc::new(file)
    }

    /// Submits and awaits one request, checking the buffers come back unchanged.
    async fn write(
        engine: &dyn IoEngine,
        file: &Arc<File>,
        offset: u64,
        bufs: Vec<Bytes>,
    ) -> io::Result<()> {
        let sent = bufs.clone();
        let outcome = timeout(
            LIMIT,
            engine.submit(WriteRequest {
                file: file.clone(),
                offset,
                bufs,
            }),
        )
        .await
        .expect("write timed out")
        .expect("engine dropped the request");
        assert_eq!(outcome.request.offset, offset);
        assert!(Arc::ptr_eq(&outcome.request.file, file));
        assert_eq!(outcome.request.bufs, sent);
        outcome.result
    }

    /// Hundreds of multi-buffer requests at consecutive offsets, from several tasks, into two
    /// files; both read back byte for byte.
    async fn concurrent_writes(engine: Arc<dyn IoEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut expected = Vec::new();
        let mut jobs = Vec::new();
        for (index, count) in [("a", 240), ("b", 60)] {
            let path = dir.path().join(index);
            let file = create(&path);
            let mut content = Vec::new();
            for _ in 0..count {
                let bufs: Vec<Bytes> = (0..1 + rng.below(4))
                    .map(|_| {
                        let len = rng.below(256 * 1024) as usize;
                        rng.bytes(len)
                    })
                    .collect();
                let offset = content.len() as u64;
                bufs.iter().for_each(|b| content.extend_from_slice(b));
                jobs.push((file.clone(), offset, bufs));
            }
            expected.push((path, content));
        }

        const TASKS: usize = 4;
        let mut per_task: Vec<Vec<_>> = (0..TASKS).map(|_| Vec::new()).collect();
        for (i, job) in jobs.into_iter().enumerate() {
            per_task[i % TASKS].push(job);
        }
        let tasks: Vec<_> = per_task
            .into_iter()
            .map(|jobs| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    // Submit everything first so many requests are in flight at once.
                    let pending: Vec<_> = jobs
                        .into_iter()
                        .map(|(file, offset, bufs)| {
                            let sent = bufs.clone();
                            (sent, engine.submit(WriteRequest { file, offset, bufs }))
                        })
                        .collect();
                    for (sent, rx) in pending {
                        let outcome = rx.await.expect("engine dropped the request");
                        outcome.result.unwrap();
                        assert_eq!(outcome.request.bufs, sent);
                        let same_memory = sent
                            .iter()
                            .zip(&outcome.request.bufs)
                            .all(|(a, b)| a.as_ptr() == b.as_ptr());
                        assert!(
                            same_memory,
                            "the engine must hand back the very buffers it was given"
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            timeout(LIMIT, task)
                .await
                .expect("writes timed out")
                .unwrap();
        }
        for (path, content) in expected {
            assert!(
                fs::read(&path).unwrap() == content,
                "{} differs",
                path.display()
            );
        }
    }

    /// Later offsets first: the file still ends up right, holes are zeros until filled.
    async fn out_of_order_offsets(engine: Arc<dyn IoEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = create(&path);
        let mut rng = Rng(77);
        let chunks: Vec<Bytes> = (0..32).map(|i| rng.bytes(1000 + i * 37)).collect();
        let mut offsets = Vec::new();
        let mut at = 0u64;
        for chunk in &chunks {
            offsets.push(at);
            at += chunk.len() as u64;
        }
        let pending: Vec<_> = chunks
            .iter()
            .zip(&offsets)
            .rev()
            .map(|(chunk, &offset)| {
                engine.submit(WriteRequest {
                    file: file.clone(),
                    offset,
                    bufs: vec![chunk.clone()],
                })
            })
            .collect();
        for rx in pending {
            timeout(LIMIT, rx)
                .await
                .expect("timed out")
                .unwrap()
                .result
                .unwrap();
        }
        assert_eq!(fs::read(&path).unwrap(), chunks.concat());

        // A lone write far past the end leaves a zero-filled hole.
        write(
            &*engine,
            &file,
            at + 4096,
            vec![Bytes::from_static(b"tail")],
        )
        .await
        .unwrap();
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, at + 4100);
        assert!(data[at as usize..at as usize + 4096]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(&data[at as usize + 4096..], b"tail");
    }

    /// An error comes back in the outcome, and the engine keeps working afterwards.
    async fn errors_are_reported(engine: Arc<dyn IoEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        drop(create(&path));
        let read_only = Arc::new(File::open(&path).unwrap());
        let bufs = vec![Bytes::from_static(b"nope"), Bytes::from(vec![7u8; 70_000])];
        let err = write(&*engine, &read_only, 0, bufs).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");

        let writable = create(&path);
        let err = write(
            &*engine,
            &writable,
            u64::MAX - 1,
            vec![Bytes::from_static(b"xy")],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

        // Empty requests succeed without touching the file.
        write(&*engine, &writable, 0, Vec::new()).await.unwrap();
        write(&*engine, &writable, 0, vec![Bytes::new(), Bytes::new()])
            .await
            .unwrap();

        write(
            &*engine,
            &writable,
            0,
            vec![Bytes::from_static(b"still "), Bytes::from_static(b"works")],
        )
        .await
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"still works");
    }

    /// Dropping the engine with requests queued and in flight: every receiver resolves, the
    /// thread exits (the drop joins it), nothing hangs.
    async fn drop_with_requests_in_flight(engine: Arc<dyn IoEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = create(&path);
        let chunk = Bytes::from(vec![0xabu8; 512 * 1024]);
        let pending: Vec<_> = (0..64u64)
            .map(|i| {
                let bufs = vec![chunk.clone(), chunk.slice(..1000)];
                engine.submit(WriteRequest {
                    file: file.clone(),
                    offset: i * 525_288,
                    bufs,
                })
            })
            .collect();
        assert_eq!(
            Arc::strong_count(&engine),
            1,
            "the test must hold the last handle"
        );
        // Dropping joins the engine thread, so it must not run on a runtime worker.
        timeout(LIMIT, tokio::task::spawn_blocking(move || drop(engine)))
            .await
            .expect("dropping the engine hung")
            .unwrap();
        let data = fs::read(&path).unwrap();
        for rx in pending {
            // Already resolved: the thread is gone.
            if let Ok(outcome) = rx.await {
                outcome.result.unwrap();
                let start = outcome.request.offset as usize;
                let written = data.get(start..start + outcome.request.len() as usize);
                assert!(written.is_some_and(|w| w.iter().all(|&b| b == 0xab)));
            }
        }
    }

    /// A full disk (ENOSPC past a byte budget), a broken one (EIO), and recovery.
    async fn faults(engine: Arc<dyn IoEngine>) {
        let faulty = FaultyEngine::new(engine);
        let faults = faulty.handle();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = create(&path);
        let block = |byte: u8| vec![Bytes::from(vec![byte; 600]), Bytes::from(vec![byte; 400])];

        faults.fail_enospc_after(2_500);
        write(&faulty, &file, 0, block(1)).await.unwrap();
        write(&faulty, &file, 1000, block(2)).await.unwrap();
        // 3000 > 2500: this one crosses the limit.
        let err = write(&faulty, &file, 2000, block(3)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        // What still fits is written; one byte more is not.
        write(&faulty, &file, 2000, vec![Bytes::from(vec![3u8; 500])])
            .await
            .unwrap();
        let err = write(&faulty, &file, 2500, vec![Bytes::from_static(b"x")])
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len(), 2500);
        assert!(data[..1000].iter().all(|&b| b == 1));
        assert!(data[1000..2000].iter().all(|&b| b == 2));
        assert!(data[2000..].iter().all(|&b| b == 3));
        assert_eq!(faults.bytes_written(), 2500);

        faults.fail_eio();
        let err = write(&faulty, &file, 2500, block(4)).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));

        faults.clear();
        write(&faulty, &file, 2500, block(5)).await.unwrap();
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len(), 3500);
        assert!(data[2500..].iter().all(|&b| b == 5));
        assert_eq!(faults.bytes_written(), 3500);

        // A slow disk: every write held 30-60 ms, released in submission order.
        faults.delay_writes(Duration::from_millis(30), Duration::from_millis(60), 7);
        let started = std::time::Instant::now();
        let pending: Vec<_> = (0..3u64)
            .map(|i| {
                faulty.submit(WriteRequest {
                    file: file.clone(),
                    offset: 3500 + i * 1000,
                    bufs: block(6 + i as u8),
                })
            })
            .collect();
        for rx in pending {
            rx.await.unwrap().result.unwrap();
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len(), 6500);
        assert!(data[5500..].iter().all(|&b| b == 8));
        faults.clear();
    }

    #[test]
    fn write_delays_parse_as_one_duration_or_a_range() {
        use super::faulty::parse_delay;
        let ms = Duration::from_millis;
        assert_eq!(parse_delay("100ms"), Ok((ms(100), ms(100))));
        assert_eq!(parse_delay("50ms..200ms"), Ok((ms(50), ms(200))));
        assert!(parse_delay("200ms..50ms").is_err());
        assert!(parse_delay("2min").is_err());
        assert!(parse_delay("slow").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_engine_picks_the_engine() {
        let engine = open_engine(EngineChoice::Sync, "open-sync").unwrap();
        assert_eq!(engine.kind(), EngineKind::Sync);
        assert_eq!(engine.kind().as_str(), "sync");

        let auto = open_engine(EngineChoice::Auto, "open-auto").unwrap();
        if uring_available() {
            assert_eq!(auto.kind(), EngineKind::Uring);
            assert_eq!(auto.kind().as_str(), "io_uring");
            let forced = open_engine(EngineChoice::Uring, "open-uring").unwrap();
            assert_eq!(forced.kind(), EngineKind::Uring);
        } else {
            assert_eq!(auto.kind(), EngineKind::Sync);
            assert!(open_engine(EngineChoice::Uring, "open-uring").is_err());
        }
        assert_eq!(EngineChoice::default(), EngineChoice::Auto);
        // A name that cannot be a thread name is still fine.
        assert!(open_engine(EngineChoice::Sync, "bad\0name").is_ok());
    }

    /// True if io_uring works here. If it does not, the io_uring tests fail unless
    /// `SLUICE_ALLOW_NO_URING=1` says that is expected on this machine.
    fn uring_available() -> bool {
        match probe_uring() {
            Ok(()) => true,
            Err(err) if std::env::var("SLUICE_ALLOW_NO_URING").as_deref() == Ok("1") => {
                eprintln!("io_uring unavailable ({err}); io_uring tests not run (SLUICE_ALLOW_NO_URING=1)");
                false
            }
            Err(err) => panic!(
                "io_uring unavailable here: {err}; set SLUICE_ALLOW_NO_URING=1 to skip its tests"
            ),
        }
    }

    fn sync_engine(name: &str) -> Option<Arc<dyn IoEngine>> {
        Some(Arc::new(SyncEngine::new(name).unwrap()))
    }

    fn uring_engine(name: &str) -> Option<Arc<dyn IoEngine>> {
        uring_available().then(|| Arc::new(UringEngine::new(name).unwrap()) as Arc<dyn IoEngine>)
    }

    /// A tiny ring and tiny write ops: exercises the overflow queue and the resubmission of
    /// partly written buffers (the short write path) on every request.
    fn uring_tiny_engine(name: &str) -> Option<Arc<dyn IoEngine>> {
        uring_available().then(|| {
            Arc::new(UringEngine::with_config(name, 4, 3001).unwrap()) as Arc<dyn IoEngine>
        })
    }

    fn faulty_sync_engine(name: &str) -> Option<Arc<dyn IoEngine>> {
        Some(Arc::new(FaultyEngine::new(sync_engine(name)?)))
    }

    fn faulty_uring_engine(name: &str) -> Option<Arc<dyn IoEngine>> {
        Some(Arc::new(FaultyEngine::new(uring_engine(name)?)))
    }

    /// One test module per engine, one test per suite function.
    macro_rules! engine_tests {
        ($($engine:ident),* ; $cases:tt) => {
            $( engine_tests!(@one $engine $cases); )*
        };
        (@one $engine:ident [$($case:ident),*]) => {
            mod $engine {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        let name = concat!(stringify!($engine), "-", stringify!($case));
                        if let Some(engine) = super::$engine(name) {
                            super::$case(engine).await;
                        }
                    }
                )*
            }
        };
    }

    engine_tests!(
        sync_engine, uring_engine, uring_tiny_engine, faulty_sync_engine, faulty_uring_engine;
        [concurrent_writes, out_of_order_offsets, errors_are_reported, drop_with_requests_in_flight, faults]
    );
}
