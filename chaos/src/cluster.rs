//! A cluster of real `sluice` processes on loopback: one master and N workers, each with its
//! stderr in a log file, every child killed (SIGKILL) when its handle is dropped, on every path.
//!
//! Each worker reads a TOML config file the harness writes (`<name>/w<i>.toml`) and binds port 0
//! for push and fetch; its ready line tells the ports. A worker can sit behind [`Proxy`]s (its
//! push, fetch and master connections), so it can be cut off the network, and on a size-limited
//! tmpfs, so its disk fills up.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{FrameLimits, MessageType};
use sluice_protocol::rpc::RpcClient;
use sluice_protocol::{pb, ErrorCode};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::proxy::Proxy;

/// How long a process may take to print its ready line, and a cluster to form.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A scenario could not run here (not a pass, not a failure), with the reason.
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skipped {}

/// Pids of children started and not yet reaped, for the final sweep.
pub type Registry = Arc<Mutex<BTreeMap<u32, String>>>;

/// One harness run: the binary, the run directory and the children it started.
#[derive(Debug, Clone)]
pub struct Run {
    pub sluice: PathBuf,
    pub dir: PathBuf,
    pub live: Registry,
    /// Config keys and TOML values written into every worker's config file, after the
    /// scenario's own.
    pub worker_settings: Vec<(String, String)>,
}

impl Run {
    pub fn new(sluice: PathBuf, dir: PathBuf) -> Run {
        Run {
            sluice,
            dir,
            live: Registry::default(),
            worker_settings: Vec::new(),
        }
    }

    /// SIGKILLs every child still registered (a handle that was leaked, say) and returns how
    /// many there were. Only pids whose parent is this process are touched.
    pub fn sweep(&self) -> usize {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let me = std::process::id();
        let mut swept = 0;
        for (pid, name) in std::mem::take(&mut *live) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The fourth field of /proc/<pid>/stat is the parent pid (after "pid (comm) state").
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(me) {
                tracing::warn!(pid, name = %name, "final sweep: killing a leftover child");
                signal(pid, libc::SIGKILL);
                swept += 1;
            }
        }
        swept
    }
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// The push and fetch addresses a worker process bound: its two listening TCP sockets
/// (`/proc/<pid>/fd` → socket inodes → `/proc/<pid>/net/tcp`), told apart by asking each to
/// open a stream of a location that does not exist. Only the fetch port looks it up (and
/// answers `NotFound`); the push port does not serve the request at all.
async fn bound_ports(pid: u32) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let ports = listening_ports(pid)?;
    let [a, b] = ports[..] else {
        bail!("worker pid {pid} listens on {ports:?}, not on two ports");
    };
    let (a, b) = (
        SocketAddr::from(([127, 0, 0, 1], a)),
        SocketAddr::from(([127, 0, 0, 1], b)),
    );
    match (is_fetch_port(a).await?, is_fetch_port(b).await?) {
        (false, true) => Ok((a, b)),
        (true, false) => Ok((b, a)),
        answers => bail!("cannot tell the push port from the fetch port of pid {pid}: {answers:?}"),
    }
}

/// Loopback TCP ports process `pid` listens on.
fn listening_ports(pid: u32) -> anyhow::Result<Vec<u16>> {
    let mut sockets = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            sockets.insert(inode.to_string());
        }
    }
    // Columns: sl local_address rem_address st ... uid timeout inode; state 0A is LISTEN.
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    let mut ports = Vec::new();
    for line in table.lines().skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        if columns.len() > 9 && columns[3] == "0A" && sockets.contains(columns[9]) {
            let port = columns[1].rsplit(':').next().unwrap_or_default();
            ports.push(u16::from_str_radix(port, 16)?);
        }
    }
    ports.sort_unstable();
    Ok(ports)
}

async fn is_fetch_port(addr: SocketAddr) -> anyhow::Result<bool> {
    let probe = pb::OpenStreamHeader {
        location: Some(pb::LocationRef {
            shuffle: Some(pb::ShuffleKey {
                app_id: "chaos-probe".into(),
                shuffle_id: 0,
            }),
            ..pb::LocationRef::default()
        }),
        ..pb::OpenStreamHeader::default()
    };
    let client =
        RpcClient::connect(&addr.to_string(), FrameLimits::default(), READY_TIMEOUT).await?;
    let answer = client
        .call(
            OutFrame::new(MessageType::OpenStream, 0, &probe),
            READY_TIMEOUT,
        )
        .await;
    Ok(matches!(answer, Err(e) if e.code() == ErrorCode::NotFound))
}

/// One child process. Dropping it SIGKILLs it.
#[derive(Debug)]
pub struct Process {
    name: String,
    pid: u32,
    child: Child,
    /// Kept open so the child never writes to a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    live: Registry,
}

impl Process {
    /// Starts `sluice args...` with stderr appended to `log` and waits for its first stdout
    /// line, a JSON object, which it returns.
    async fn start(
        run: &Run,
        name: &str,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<(Process, serde_json::Value)> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(&run.sluice);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE_") {
                command.env_remove(key);
            }
        }
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
        // which is async-signal-safe and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                // Die with the harness, even when it is itself SIGKILLed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} {}", run.sluice.display(), args.join(" ")))?;
        let pid = child.id().ok_or_else(|| anyhow!("{name} exited at once"))?;
        run.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, name.to_string());
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut process = Process {
            name: name.to_string(),
            pid,
            child,
            _stdout: BufReader::new(stdout).lines(),
            live: run.live.clone(),
        };
        let line = tokio::time::timeout(READY_TIMEOUT, process._stdout.next_line()).await;
        let line = match line {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                bail!(
                    "{name} exited before it was ready: {} (log: {})",
                    last.unwrap_or("no output"),
                    log.display()
                )
            }
            Err(_) => bail!(
                "{name} printed nothing in {READY_TIMEOUT:?} (log: {})",
                log.display()
            ),
        };
        let ready = serde_json::from_str(&line)
            .with_context(|| format!("{name} printed {line:?}, not a JSON line"))?;
        tracing::debug!(name, pid, %line, "ready");
        Ok((process, ready))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILLs the process and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    fn signal(&self, sig: libc::c_int) -> bool {
        signal(self.pid, sig)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process. A reaped child makes this a no-op.
        let _ = self.child.start_kill();
        let reaped = matches!(self.child.try_wait(), Ok(Some(_)));
        tracing::debug!(name = %self.name, pid = self.pid, reaped, "killed");
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
    }
}

/// A tmpfs mounted for one worker; unmounted (lazily) on drop.
#[derive(Debug)]
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, Skipped> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| Skipped(format!("cannot run mount: {e}")))?;
        if !out.status.success() {
            return Err(Skipped(format!(
                "mount -t tmpfs -o size={size} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(dir = %self.0.display(), ?status, "unmounting the tmpfs failed");
        }
    }
}

/// How to start one worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerSpec {
    /// Put proxies in front of its push and fetch ports and between it and the master.
    pub proxied: bool,
    /// Mount a tmpfs of this size (`"8m"`) as its data directory.
    pub tmpfs: Option<String>,
    /// Config keys and TOML values (`("memory_budget", "\"64MiB\"")`) over the harness's
    /// defaults; the run's own settings ([`Run::worker_settings`]) come last.
    pub settings: Vec<(String, String)>,
}

impl WorkerSpec {
    /// Sets `key` to the TOML value `value` (replacing an earlier setting of it).
    pub fn set(mut self, key: &str, value: impl Into<String>) -> WorkerSpec {
        self.settings.retain(|(k, _)| k != key);
        self.settings.push((key.to_string(), value.into()));
        self
    }
}

/// `text` as a TOML string.
pub fn toml_text(text: &str) -> String {
    // A JSON string is a TOML basic string: same quotes, same escapes.
    serde_json::Value::String(text.to_string()).to_string()
}

/// The proxies that can cut a worker off.
#[derive(Debug)]
struct Proxies {
    push: Proxy,
    fetch: Proxy,
    master: Proxy,
}

/// One worker of the cluster.
#[derive(Debug)]
pub struct Worker {
    pub id: String,
    pub data_dir: PathBuf,
    /// Push address as told to the master and clients (a proxy's, when proxied). Changes when
    /// the worker restarts: it binds port 0 each time.
    pub push: String,
    pub fetch: String,
    /// Its config file, written once; a restart reads it again.
    config: PathBuf,
    log: PathBuf,
    process: Option<Process>,
    proxies: Option<Proxies>,
}

impl Worker {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }
}

/// A master and its workers. Fields drop in order: processes first, then the mounts.
#[derive(Debug)]
pub struct Cluster {
    pub workers: Vec<Worker>,
    master: Option<Process>,
    pub master_addr: String,
    pub dir: PathBuf,
    run: Run,
    _mounts: Vec<Mount>,
}

impl Cluster {
    /// Starts a master and one worker per spec under `<run dir>/<name>`, and waits until the
    /// master sees every worker alive.
    pub async fn start(run: &Run, name: &str, specs: &[WorkerSpec]) -> anyhow::Result<Cluster> {
        let dir = run.dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        // The default commit timeout (600s) would hold every commit up for ten minutes on a
        // worker that is cut off; a commit of this harness's data takes milliseconds.
        let args: Vec<String> = [
            "master",
            "--listen",
            "127.0.0.1:0",
            "--worker-timeout",
            "3s",
            "--worker-rpc-timeout",
            "5s",
            "--commit-timeout",
            "10s",
        ]
        .map(String::from)
        .to_vec();
        let (master, ready) = Process::start(run, "master", &args, &dir.join("master.log")).await?;
        let master_addr = ready["master"]
            .as_str()
            .ok_or_else(|| anyhow!("master printed {ready}"))?
            .to_string();
        let mut cluster = Cluster {
            workers: Vec::new(),
            master: Some(master),
            master_addr,
            dir,
            run: run.clone(),
            _mounts: Vec::new(),
        };
        for (i, spec) in specs.iter().enumerate() {
            cluster.add_worker(i, spec).await?;
        }
        cluster.wait_alive(specs.len()).await?;
        Ok(cluster)
    }

    async fn add_worker(&mut self, i: usize, spec: &WorkerSpec) -> anyhow::Result<()> {
        let id = format!("w{i}");
        let data_dir = self.dir.join(&id).join("data");
        std::fs::create_dir_all(&data_dir)?;
        if let Some(size) = &spec.tmpfs {
            self._mounts.push(Mount::tmpfs(&data_dir, size)?);
        }
        let proxies = if spec.proxied {
            Some(Proxies {
                push: Proxy::start(None).await?,
                fetch: Proxy::start(None).await?,
                master: Proxy::start(Some(self.master_addr.parse()?)).await?,
            })
        } else {
            None
        };
        // Both ports are bound by the worker itself (port 0), so no other process can take
        // them between a choice and a bind; a proxied worker advertises its proxies' ports.
        let mut settings = vec![
            ("id".to_string(), toml_text(&id)),
            ("push_listen".into(), toml_text("127.0.0.1:0")),
            ("fetch_listen".into(), toml_text("127.0.0.1:0")),
            (
                "data_dirs".into(),
                format!("[{}]", toml_text(&data_dir.display().to_string())),
            ),
            ("heartbeat_interval".into(), toml_text("300ms")),
            ("replica_timeout".into(), toml_text("2s")),
            ("busy_wait".into(), toml_text("300ms")),
        ];
        match &proxies {
            Some(proxies) => settings.extend([
                (
                    "master".into(),
                    toml_text(&proxies.master.addr().to_string()),
                ),
                (
                    "advertise_push_port".into(),
                    proxies.push.addr().port().to_string(),
                ),
                (
                    "advertise_fetch_port".into(),
                    proxies.fetch.addr().port().to_string(),
                ),
            ]),
            None => settings.push(("master".into(), toml_text(&self.master_addr))),
        }
        for (key, value) in spec.settings.iter().chain(&self.run.worker_settings) {
            settings.retain(|(k, _)| k != key);
            settings.push((key.clone(), value.clone()));
        }
        let config = self.dir.join(format!("{id}.toml"));
        let text: String = settings
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        self.workers.push(Worker {
            log: self.dir.join(format!("{id}.log")),
            id,
            data_dir,
            push: String::new(),
            fetch: String::new(),
            config,
            process: None,
            proxies,
        });
        self.start_worker(self.workers.len() - 1).await
    }

    /// Starts worker `i` from its config file and waits for its ready line (printed once the
    /// master accepted its registration); learns its addresses.
    async fn start_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let worker = &self.workers[i];
        let args = vec![
            "worker".to_string(),
            "--config".into(),
            worker.config.display().to_string(),
        ];
        let (process, ready) = Process::start(&self.run, &worker.id, &args, &worker.log).await?;
        let addr = |key: &str| {
            ready[key]
                .as_str()
                .map(String::from)
                .ok_or_else(|| anyhow!("{} printed {ready}", worker.id))
        };
        let (push, fetch) = (addr("push")?, addr("fetch")?);
        if let Some(proxies) = &worker.proxies {
            // The ready line names the proxies; the worker's own ports are its listening
            // sockets.
            let (push, fetch) = bound_ports(process.pid()).await?;
            proxies.push.retarget(push);
            proxies.fetch.retarget(fetch);
        }
        let worker = &mut self.workers[i];
        worker.push = push;
        worker.fetch = fetch;
        worker.process = Some(process);
        Ok(())
    }

    /// Waits until the master lists `n` workers alive.
    pub async fn wait_alive(&self, n: usize) -> anyhow::Result<()> {
        let client = SluiceClient::new(ClientConfig::new(self.master_addr.clone()))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(status) = client.cluster_status().await {
                if status.workers.iter().filter(|w| w.alive).count() >= n {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the master did not see {n} live workers in {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the worker with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    /// SIGKILLs worker `i` and reaps it.
    pub async fn kill(&mut self, i: usize) {
        if let Some(process) = self.workers[i].process.take() {
            tracing::info!(worker = %self.workers[i].id, pid = process.pid(), "SIGKILL");
            process.kill().await;
        }
    }

    /// SIGSTOPs worker `i`.
    pub fn stop(&self, i: usize) -> bool {
        tracing::info!(worker = %self.workers[i].id, "SIGSTOP");
        self.workers[i]
            .process
            .as_ref()
            .is_some_and(|p| p.signal(libc::SIGSTOP))
    }

    /// SIGCONTs worker `i`.
    pub fn resume(&self, i: usize) -> bool {
        tracing::info!(worker = %self.workers[i].id, "SIGCONT");
        self.workers[i]
            .process
            .as_ref()
            .is_some_and(|p| p.signal(libc::SIGCONT))
    }

    /// SIGKILLs worker `i` and starts it again with the same id, config and data directories;
    /// returns once the master accepted its registration. Its ports are new (port 0 again): the
    /// master points every shuffle at them when the worker registers.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i).await;
        tracing::info!(worker = %self.workers[i].id, "restarting on the same data directories");
        self.start_worker(i).await
    }

    /// The pid of worker `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.workers[i].pid()
    }

    /// Cuts worker `i` off the network (it must have been started `proxied`).
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        let proxies = self.workers[i]
            .proxies
            .as_ref()
            .ok_or_else(|| anyhow!("worker {} has no proxies", self.workers[i].id))?;
        tracing::info!(worker = %self.workers[i].id, "network cut");
        proxies.push.cut();
        proxies.fetch.cut();
        proxies.master.cut();
        Ok(())
    }

    /// Reconnects worker `i`.
    pub fn heal(&self, i: usize) {
        if let Some(proxies) = &self.workers[i].proxies {
            tracing::info!(worker = %self.workers[i].id, "network healed");
            proxies.push.heal();
            proxies.fetch.heal();
            proxies.master.heal();
        }
    }

    /// Committed data files (`*-<role>.data`) of worker `i`, sorted.
    pub fn data_files(&self, i: usize, role: char) -> Vec<PathBuf> {
        let suffix = format!("-{role}.data");
        let mut found = Vec::new();
        let mut stack = vec![self.workers[i].data_dir.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.to_string_lossy().ends_with(&suffix) {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    }

    /// Kills every process now (also done on drop).
    pub async fn shutdown(mut self) {
        for i in 0..self.workers.len() {
            self.kill(i).await;
        }
        if let Some(master) = self.master.take() {
            master.kill().await;
        }
    }
}
