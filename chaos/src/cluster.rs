//! A cluster of real `sluice` processes on loopback: one master (or a Raft group of several) and
//! N workers, each with its stderr in a log file, every child killed (SIGKILL) when its handle is
//! dropped, on every path.
//!
//! Each master reads a TOML config file (`<name>/m<i>.toml`) and keeps its state in its own data
//! directory. Masters must know each other's addresses before they start, and one must come back
//! on its own address after a kill, so port 0 will not do: each master gets its own loopback IP
//! (`127.a.b.c`) and a port below the ephemeral range, derived from the cluster's directory (the
//! same for the whole run, different for concurrent runs) and checked free by binding it. Workers
//! and clients are given the masters as one comma-separated list and follow the leader, which
//! [`Cluster::leader`] finds by asking the masters themselves (`MasterStatus`).
//!
//! Each worker reads a TOML config file the harness writes (`<name>/w<i>.toml`) and binds port 0
//! for push and fetch; its ready line tells the ports. A worker can sit behind [`Proxy`]s (its
//! push, fetch and master connections), so it can be cut off the network, and on a size-limited
//! tmpfs, so its disk fills up.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::auth::{Principal, SignedRequest};
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{FrameLimits, MessageType};
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::rpc::RpcClient;
use sluice_protocol::tls::TlsConnector;
use sluice_protocol::{pb, ErrorCode};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tonic::transport::{Channel, Endpoint};

use crate::proxy::{Proxy, Shape};
use crate::security::{Security, RAW_PRINCIPAL, SERVER_NAME};

/// How long a process may take to print its ready line, and a cluster to form.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The masters' `election_timeout` (a follower that hears no leader for a random time between
/// it and twice it starts an election), written into their config files: their default.
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(400);

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
    /// A `--secure` run's secret and certificates ([`Run::secure`]); `None`: everything plain.
    pub security: Option<Arc<Security>>,
}

impl Run {
    pub fn new(sluice: PathBuf, dir: PathBuf) -> Run {
        Run {
            sluice,
            dir,
            live: Registry::default(),
            worker_settings: Vec::new(),
            security: None,
        }
    }

    /// Makes this run secure: a cluster secret and certificates for every master and worker,
    /// authentication and TLS for every connection of the harness.
    pub async fn secure(&mut self) -> anyhow::Result<()> {
        let security = Security::prepare(&self.sluice, &self.dir).await?;
        self.security = Some(Arc::new(security));
        Ok(())
    }

    /// The client settings of every scenario: short timeouts so a dead or silent worker is
    /// noticed in seconds, and small batches so there are many pushes and chunks to interrupt.
    /// In a secure run, TLS and the run's application secret.
    pub fn client_config(&self, master: &str, replication: u32) -> ClientConfig {
        let mut config = ClientConfig {
            replication,
            batch_size: crate::setup::BATCH_SIZE,
            push_size: 128 * 1024,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            push_retry_timeout: Duration::from_secs(60),
            layout_timeout: Duration::from_secs(60),
            // A stopped master is given up on by the connection's keep-alive (about 1.5 s, at
            // the default settings); the masters elect a new leader in about as long, and a
            // call keeps trying the others well past that.
            master_retry_timeout: Duration::from_secs(30),
            ..ClientConfig::new(master)
        };
        if let Some(security) = &self.security {
            config.app_secret = Some(security.app_secret.clone());
            config.tls = true;
            config.tls_ca_file = security.ca.display().to_string();
            config.tls_server_name = SERVER_NAME.into();
        }
        config
    }

    /// A client of the masters in `master` for the harness's own questions (`ClusterStatus`),
    /// signing them as the operator in a secure run: an application's client may not ask.
    pub fn operator(&self, master: &str) -> anyhow::Result<SluiceClient> {
        let client = SluiceClient::new(self.client_config(master, 1))?;
        Ok(match &self.security {
            Some(security) => client.as_operator(&security.keyring),
            None => client,
        })
    }

    /// `message` as a gRPC request of `principal`: signed in a secure run, plain otherwise.
    pub fn sign<T: SignedRequest>(
        &self,
        principal: &Principal,
        message: T,
    ) -> anyhow::Result<tonic::Request<T>> {
        match &self.security {
            Some(security) => security.sign(principal, message),
            None => Ok(tonic::Request::new(message)),
        }
    }

    /// A data-plane connection to the worker port `addr` within `timeout`: in a secure run with
    /// TLS and a session as the cluster principal `worker:<worker>`.
    pub async fn rpc(
        &self,
        addr: &str,
        worker: &str,
        timeout: Duration,
    ) -> sluice_protocol::ProtocolResult<RpcClient> {
        let credentials = self
            .security
            .as_ref()
            .map(|s| s.credentials(Principal::Worker(worker.to_string())));
        let tls = self.security.as_ref().map(|s| &s.tls);
        RpcClient::connect_with(
            addr,
            FrameLimits::default(),
            timeout,
            credentials.as_ref(),
            tls,
        )
        .await
    }

    /// A gRPC channel connected to the master at `addr` (not to whichever master leads), each
    /// call on it bounded by `timeout`; with TLS in a secure run.
    pub async fn master_channel(&self, addr: &str, timeout: Duration) -> anyhow::Result<Channel> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        let channel = match &self.security {
            Some(security) => {
                endpoint
                    .connect_with_connector(TlsConnector::new(&security.tls))
                    .await
            }
            None => endpoint.connect().await,
        };
        channel.with_context(|| format!("connecting to master {addr}"))
    }

    /// What the master at `addr` answers to `MasterStatus` (signed as the operator in a secure
    /// run), within `timeout` (connecting included).
    pub async fn master_status(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> anyhow::Result<pb::MasterStatusResponse> {
        let ask = async {
            let channel = self.master_channel(addr, timeout).await?;
            let request = self.sign(&Principal::Admin, pb::MasterStatusRequest {})?;
            let status = MasterClient::new(channel).master_status(request).await?;
            anyhow::Ok(status.into_inner())
        };
        tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| anyhow!("{addr} did not answer MasterStatus within {timeout:?}"))?
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
async fn bound_ports(run: &Run, pid: u32) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let ports = listening_ports(pid)?;
    let [a, b] = ports[..] else {
        bail!("worker pid {pid} listens on {ports:?}, not on two ports");
    };
    let (a, b) = (
        SocketAddr::from(([127, 0, 0, 1], a)),
        SocketAddr::from(([127, 0, 0, 1], b)),
    );
    match (is_fetch_port(run, a).await?, is_fetch_port(run, b).await?) {
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

async fn is_fetch_port(run: &Run, addr: SocketAddr) -> anyhow::Result<bool> {
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
    let client = run
        .rpc(&addr.to_string(), RAW_PRINCIPAL, READY_TIMEOUT)
        .await?;
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

    /// Waits up to `limit` for the process to exit by itself; whether it did.
    async fn exited(&mut self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.child.wait()).await,
            Ok(Ok(_))
        )
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

/// One master process. Its address is fixed for the run: it restarts on it, and its peers know
/// it in advance.
#[derive(Debug)]
pub struct Master {
    /// Its Raft id, which is its index in [`Cluster::masters`].
    pub id: usize,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Its config file, written once; a restart reads it again.
    config: PathBuf,
    log: PathBuf,
    process: Option<Process>,
    /// SIGSTOPped and not SIGCONTed since.
    stopped: bool,
}

impl Master {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Running and not stopped.
    pub fn serving(&self) -> bool {
        self.process.is_some() && !self.stopped
    }
}

/// The master the masters agree leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its index in [`Cluster::masters`].
    pub index: usize,
    pub addr: String,
    pub term: u64,
}

/// Masters and their workers. Fields drop in order: processes first, then the mounts.
#[derive(Debug)]
pub struct Cluster {
    pub workers: Vec<Worker>,
    pub masters: Vec<Master>,
    /// Every master's address, comma-separated: the `master` setting of workers and clients.
    pub master_addr: String,
    pub dir: PathBuf,
    /// The run it belongs to (its security, for the harness's own connections).
    pub run: Run,
    _mounts: Vec<Mount>,
}

impl Cluster {
    /// Starts one master and one worker per spec under `<run dir>/<name>`, and waits until the
    /// master sees every worker alive.
    pub async fn start(run: &Run, name: &str, specs: &[WorkerSpec]) -> anyhow::Result<Cluster> {
        Cluster::start_with_masters(run, name, 1, specs).await
    }

    /// Starts `masters` masters (a Raft group when more than one) and one worker per spec under
    /// `<run dir>/<name>`, and waits until the masters elected a leader and it sees every worker
    /// alive.
    pub async fn start_with_masters(
        run: &Run,
        name: &str,
        masters: usize,
        specs: &[WorkerSpec],
    ) -> anyhow::Result<Cluster> {
        if masters == 0 {
            bail!("a cluster needs a master");
        }
        if masters > 1 && specs.iter().any(|s| s.proxied) {
            bail!("a proxied worker reaches one master only: use a single master");
        }
        let dir = run.dir.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let addrs = master_addrs(&dir, masters)?;
        let master_addr = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            workers: Vec::new(),
            masters: Vec::new(),
            master_addr,
            dir,
            run: run.clone(),
            _mounts: Vec::new(),
        };
        for (id, addr) in addrs.iter().enumerate() {
            cluster.add_master(id, *addr, &addrs)?;
        }
        for i in 0..masters {
            cluster.start_master(i).await?;
        }
        // Even a lone master serves only once it has elected itself.
        cluster.leader(READY_TIMEOUT).await?;
        for (i, spec) in specs.iter().enumerate() {
            cluster.add_worker(i, spec).await?;
        }
        cluster.wait_alive(specs.len()).await?;
        Ok(cluster)
    }

    /// Writes master `id`'s config file: its address, data directory and, in a group, its peers.
    fn add_master(
        &mut self,
        id: usize,
        addr: SocketAddr,
        peers: &[SocketAddr],
    ) -> anyhow::Result<()> {
        let data_dir = self.dir.join(format!("m{id}")).join("data");
        std::fs::create_dir_all(&data_dir)?;
        let mut settings = vec![
            ("listen".to_string(), toml_text(&addr.to_string())),
            ("admin_listen".into(), toml_text("127.0.0.1:0")),
            ("advertise".into(), toml_text(&addr.to_string())),
            ("id".into(), id.to_string()),
            (
                "data_dir".into(),
                toml_text(&data_dir.display().to_string()),
            ),
            // Seconds, not the defaults' minutes: a lost worker is noticed while the scenario
            // runs, and a commit of this harness's data takes milliseconds (the default 600s
            // would hold every commit up for ten minutes on a worker that is cut off).
            ("worker_timeout".into(), toml_text("3s")),
            ("worker_rpc_timeout".into(), toml_text("5s")),
            ("commit_timeout".into(), toml_text("10s")),
            (
                "election_timeout".into(),
                toml_text(&format!("{}ms", ELECTION_TIMEOUT.as_millis())),
            ),
        ];
        if let Some(security) = &self.run.security {
            settings.extend(security.master_settings());
        }
        if peers.len() > 1 {
            let list: Vec<String> = peers.iter().map(|p| toml_text(&p.to_string())).collect();
            settings.push(("peers".into(), format!("[{}]", list.join(", "))));
        }
        let config = self.dir.join(format!("m{id}.toml"));
        let text: String = settings
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        self.masters.push(Master {
            id,
            addr,
            data_dir,
            log: self.dir.join(format!("m{id}.log")),
            config,
            process: None,
            stopped: false,
        });
        Ok(())
    }

    /// Starts master `i` from its config file (same address, same data directory every time) and
    /// waits for its ready line.
    pub async fn start_master(&mut self, i: usize) -> anyhow::Result<()> {
        let master = &self.masters[i];
        let args = vec![
            "master".to_string(),
            "--config".into(),
            master.config.display().to_string(),
        ];
        let name = format!("m{}", master.id);
        let (process, _) = Process::start(&self.run, &name, &args, &master.log).await?;
        let master = &mut self.masters[i];
        master.process = Some(process);
        master.stopped = false;
        Ok(())
    }

    /// SIGKILLs master `i` and reaps it.
    pub async fn kill_master(&mut self, i: usize) {
        if let Some(process) = self.masters[i].process.take() {
            tracing::info!(master = i, pid = process.pid(), "SIGKILL");
            process.kill().await;
        }
        self.masters[i].stopped = false;
    }

    /// SIGKILLs master `i` and starts it again on its address and data directory.
    pub async fn restart_master(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_master(i).await;
        tracing::info!(
            master = i,
            "restarting on the same address and data directory"
        );
        self.start_master(i).await
    }

    /// SIGSTOPs master `i`.
    pub fn stop_master(&mut self, i: usize) -> bool {
        tracing::info!(master = i, "SIGSTOP");
        let master = &mut self.masters[i];
        let stopped = master
            .process
            .as_ref()
            .is_some_and(|p| p.signal(libc::SIGSTOP));
        master.stopped |= stopped;
        stopped
    }

    /// SIGCONTs master `i`.
    pub fn resume_master(&mut self, i: usize) -> bool {
        tracing::info!(master = i, "SIGCONT");
        let master = &mut self.masters[i];
        let resumed = master
            .process
            .as_ref()
            .is_some_and(|p| p.signal(libc::SIGCONT));
        master.stopped &= !resumed;
        resumed
    }

    /// What every serving master (running, not stopped) answers to `MasterStatus` within
    /// `timeout`, by index; masters that did not answer are left out.
    pub async fn master_statuses(
        &self,
        timeout: Duration,
    ) -> Vec<(usize, pb::MasterStatusResponse)> {
        let mut asks = tokio::task::JoinSet::new();
        for (i, master) in self.masters.iter().enumerate() {
            if master.serving() {
                let (addr, run) = (master.addr.to_string(), self.run.clone());
                asks.spawn(async move { (i, run.master_status(&addr, timeout).await) });
            }
        }
        let mut answers = Vec::new();
        while let Some(done) = asks.join_next().await {
            if let Ok((i, Ok(status))) = done {
                answers.push((i, status));
            }
        }
        answers.sort_by_key(|(i, _)| *i);
        answers
    }

    /// The leader, once the masters agree on one: a serving master that says it leads, named
    /// leader in its term by a majority of all masters (itself included). Waits up to `limit`.
    pub async fn leader(&self, limit: Duration) -> anyhow::Result<Leader> {
        self.leader_where(limit, |_| true).await
    }

    /// The leader, once the masters agree on one that `accept`s. Waits up to `limit`.
    pub async fn leader_where(
        &self,
        limit: Duration,
        accept: impl Fn(&Leader) -> bool,
    ) -> anyhow::Result<Leader> {
        let deadline = Instant::now() + limit;
        let majority = self.masters.len() / 2 + 1;
        loop {
            let answers = self.master_statuses(Duration::from_millis(500)).await;
            for (i, status) in &answers {
                let (Some(me), Some(leader)) = (&status.self_, &status.leader) else {
                    continue;
                };
                if me.id != leader.id || me.id != *i as u64 {
                    continue;
                }
                let agree = answers
                    .iter()
                    .filter(|(_, other)| {
                        other.term == status.term
                            && other.leader.as_ref().is_some_and(|l| l.id == leader.id)
                    })
                    .count();
                let found = Leader {
                    index: *i,
                    addr: leader.addr.clone(),
                    term: status.term,
                };
                if agree >= majority && accept(&found) {
                    return Ok(found);
                }
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = answers
                    .iter()
                    .map(|(i, s)| {
                        format!(
                            "m{i}: term {} leader {:?}",
                            s.term,
                            s.leader.as_ref().map(|l| l.id)
                        )
                    })
                    .collect();
                bail!(
                    "the masters agreed on no leader within {limit:?} (last answers: {})",
                    if seen.is_empty() {
                        "none".to_string()
                    } else {
                        seen.join(", ")
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
                master: Proxy::start(Some(self.masters[0].addr)).await?,
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
            // No admin port: `bound_ports` finds push and fetch as the process's only two
            // listening sockets.
            ("admin_listen".into(), toml_text("")),
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
        if let Some(security) = &self.run.security {
            settings.extend(security.worker_settings());
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
            let (push, fetch) = bound_ports(&self.run, process.pid()).await?;
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
        let client = self.run.operator(&self.master_addr)?;
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

    /// SIGTERMs worker `i` (a worker with `shutdown_drain` drains, then exits).
    pub fn terminate(&self, i: usize) -> bool {
        tracing::info!(worker = %self.workers[i].id, "SIGTERM");
        self.workers[i]
            .process
            .as_ref()
            .is_some_and(|p| p.signal(libc::SIGTERM))
    }

    /// Waits up to `limit` for worker `i` to exit by itself, and reaps it; whether it did.
    pub async fn exited(&mut self, i: usize, limit: Duration) -> bool {
        let Some(process) = self.workers[i].process.as_mut() else {
            return true;
        };
        let exited = process.exited(limit).await;
        if exited {
            self.workers[i].process = None;
        }
        exited
    }

    /// What worker `i` logged so far.
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.workers[i].log).unwrap_or_default()
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

    /// Makes worker `i`'s links sick (it must have been started `proxied`): `data` on its push
    /// link (writers, and primaries forwarding to it as a replica) and its fetch link
    /// (readers), `master` on its link to the master. `Shape::default()` heals them.
    pub fn shape(&self, i: usize, data: Shape, master: Shape) -> anyhow::Result<()> {
        self.shape_links(i, data, data, master)
    }

    /// Like [`Cluster::shape`], with the push and fetch links shaped apart. Each link draws its
    /// jitter from its own seed, derived from its shape's seed, the worker and the link.
    pub fn shape_links(
        &self,
        i: usize,
        push: Shape,
        fetch: Shape,
        master: Shape,
    ) -> anyhow::Result<()> {
        let proxies = self.workers[i]
            .proxies
            .as_ref()
            .ok_or_else(|| anyhow!("worker {} has no proxies", self.workers[i].id))?;
        tracing::info!(worker = %self.workers[i].id, ?push, ?fetch, ?master, "links shaped");
        let seeded = |shape: Shape, link: u64| Shape {
            seed: shape.seed ^ ((i as u64 + 1) << 8) ^ link,
            ..shape
        };
        proxies.push.shape(seeded(push, 1));
        proxies.fetch.shape(seeded(fetch, 2));
        proxies.master.shape(seeded(master, 3));
        Ok(())
    }

    /// What the shaped proxies of worker `i` did so far: `(stalled, resets, delayed)` summed
    /// over its links (zeros for a worker without proxies).
    pub fn injected(&self, i: usize) -> (u64, u64, u64) {
        let Some(proxies) = &self.workers[i].proxies else {
            return (0, 0, 0);
        };
        [&proxies.push, &proxies.fetch, &proxies.master]
            .iter()
            .map(|p| p.injected().counts())
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
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
        for i in 0..self.masters.len() {
            self.kill_master(i).await;
        }
    }
}

/// Addresses for `n` masters of the cluster in `dir`: each its own loopback IP (`127.a.b.c`,
/// never `127.0.x.x`) and a port from 20000 to 31999, below the ephemeral range so no outgoing
/// connection takes it while its master is down. They follow from `dir`'s path, so every start
/// of a master in this cluster has the same address and concurrent runs (other directories)
/// other ones; each is checked free by binding it (and the next candidate taken if not).
fn master_addrs(dir: &Path, n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    // FNV-1a of the path, then splitmix64 steps: a fixed sequence of candidates per directory.
    let mut state = dir
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(n);
    for _ in 0..1000 {
        if addrs.len() == n {
            return Ok(addrs);
        }
        let [a, b, c, ..] = next().to_le_bytes();
        let ip = Ipv4Addr::new(127, 1 + a % 254, b, 1 + c % 254);
        let port = 20_000 + (next() % 12_000) as u16;
        let addr = SocketAddr::from((ip, port));
        if addrs.iter().any(|a| a.ip() == addr.ip()) {
            continue;
        }
        if std::net::TcpListener::bind(addr).is_ok() {
            addrs.push(addr);
        }
    }
    if addrs.len() == n {
        return Ok(addrs);
    }
    bail!(
        "found only {} free loopback addresses for {n} masters",
        addrs.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_addresses_are_distinct_loopback_ips_fixed_per_directory() {
        let a = master_addrs(Path::new("/tmp/run-a/ha-kill-leader-push-r2"), 3).unwrap();
        let b = master_addrs(Path::new("/tmp/run-b/ha-kill-leader-push-r2"), 3).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            a,
            master_addrs(Path::new("/tmp/run-a/ha-kill-leader-push-r2"), 3).unwrap()
        );
        assert_ne!(a, b);
        for addr in a.iter().chain(&b) {
            let std::net::IpAddr::V4(ip) = addr.ip() else {
                panic!("{addr} is not IPv4");
            };
            assert!(ip.is_loopback() && ip.octets()[1] != 0, "{addr}");
            assert!((20_000..32_000).contains(&addr.port()), "{addr}");
        }
        let ips: std::collections::HashSet<_> = a.iter().map(SocketAddr::ip).collect();
        assert_eq!(ips.len(), 3);
    }
}
