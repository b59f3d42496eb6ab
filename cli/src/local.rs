//! An in-process cluster: one master (or a Raft group of several) and N workers on loopback
//! ports, each with its own data directory. `sluice local` runs one until a signal; tests and the
//! embedded benchmark use it directly.
//!
//! With [`LocalOptions::tls`] every port has TLS on, with development certificates made under
//! `<data_dir>/tls` ([`crate::certs`]); with [`LocalOptions::secret`] masters and workers share
//! a random cluster secret in `<data_dir>/cluster.secret`. `sluice local --secure` sets both.
//!
//! Masters keep their state under `<data_dir>/master-<i>`. Every master's listener is bound
//! (port 0) before any master starts, so each knows its peers' addresses without a port ever
//! being chosen and released.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chaos::proxy::{Proxy, Shape};
use sluice_client::{ClientConfig, SluiceClient};
use sluice_master::MasterConfig;
use sluice_protocol::pb;
use sluice_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long `start` waits for every worker to register.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Masters: 1, or a Raft group of 3 or 5 that workers and clients reach as a list.
    pub masters: usize,
    pub workers: usize,
    pub data_dir: PathBuf,
    /// Data directories per worker (`<data_dir>/worker-<i>/disk-<d>` when above 1).
    pub disks_per_worker: usize,
    /// Template for every master; `listen`, `advertise`, `peers`, `id` and `data_dir` are set
    /// per master.
    pub master: MasterConfig,
    /// Template for every worker; `id`, `master`, `data_dirs` and listen addresses are set per
    /// worker.
    pub worker: WorkerConfig,
    /// Give every master and worker an admin port on loopback (status page, metrics, JSON API).
    pub admin: bool,
    /// TLS on every port (gRPC, push, fetch, admin) and on every dial, with development
    /// certificates for `localhost` and 127.0.0.1 issued into `<data_dir>/tls`.
    pub tls: bool,
    /// A random cluster secret in `<data_dir>/cluster.secret` for masters and workers (clients
    /// then need application auth to push and fetch).
    pub secret: bool,
    /// Every worker's push and fetch ports behind a fault-injecting proxy ([`chaos::proxy`]),
    /// clean until [`LocalCluster::shape_worker`] makes its links slow: the benchmark's
    /// degraded runs and tests of sick links.
    pub proxied: bool,
    /// Changes the config of worker `i` from the template (a cluster whose workers differ).
    pub configure_worker: Option<fn(usize, &mut WorkerConfig)>,
}

impl LocalOptions {
    pub fn new(workers: usize, data_dir: impl Into<PathBuf>) -> LocalOptions {
        LocalOptions {
            masters: 1,
            workers,
            data_dir: data_dir.into(),
            disks_per_worker: 1,
            master: MasterConfig::default(),
            worker: WorkerConfig {
                heartbeat_interval: Duration::from_millis(500),
                memory_budget: bytesize::ByteSize::mib(512),
                ..WorkerConfig::default()
            },
            admin: true,
            tls: false,
            secret: false,
            proxied: false,
            configure_worker: None,
        }
    }

    /// TLS and the cluster secret both on (`sluice local --secure`).
    pub fn secure(mut self) -> LocalOptions {
        self.tls = true;
        self.secret = true;
        self
    }

    /// Makes the certificates and the secret asked for and sets them in the master and worker
    /// templates; returns the CA file when TLS is on.
    fn prepare_security(&mut self) -> anyhow::Result<Option<PathBuf>> {
        if self.secret {
            let secret = self.data_dir.join("cluster.secret");
            crate::certs::write_secret(&secret)?;
            let secret = secret.to_string_lossy().into_owned();
            self.master.cluster_secret_file = secret.clone();
            self.worker.cluster_secret_file = secret;
        }
        if !self.tls {
            return Ok(None);
        }
        let files = crate::certs::issue(
            &self.data_dir.join("tls"),
            &[LOCAL_SERVER_NAME.to_string()],
            &["127.0.0.1".parse()?],
            None,
        )?;
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let master = &mut self.master;
        master.tls_cert_file = path(&files.cert);
        master.tls_key_file = path(&files.key);
        master.tls_ca_file = path(&files.ca);
        master.tls_server_name = LOCAL_SERVER_NAME.into();
        (master.tls_grpc, master.tls_admin, master.tls_connect) = (true, true, true);
        let worker = &mut self.worker;
        worker.tls_cert_file = path(&files.cert);
        worker.tls_key_file = path(&files.key);
        worker.tls_ca_file = path(&files.ca);
        worker.tls_server_name = LOCAL_SERVER_NAME.into();
        (worker.tls_push, worker.tls_fetch, worker.tls_admin) = (true, true, true);
        worker.tls_connect = true;
        Ok(Some(files.ca))
    }
}

/// The name in the development certificates of `sluice local` and the name every process and
/// client expects.
pub const LOCAL_SERVER_NAME: &str = "localhost";

#[derive(Debug)]
struct LocalWorker {
    info: pb::WorkerInfo,
    /// Its admin port, when it has one.
    admin: Option<String>,
    config: WorkerConfig,
    data_dir: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The proxies in front of its push and fetch ports, with `proxied`.
    proxies: Option<(Proxy, Proxy)>,
    /// The push port the master knows it by (its proxy's, with `proxied`).
    advertised_push_port: u32,
}

#[derive(Debug)]
pub struct LocalCluster {
    /// Every master's address, comma-separated (the `master` setting of workers and clients).
    pub master_addr: String,
    /// The masters' addresses by id.
    pub masters: Vec<String>,
    /// The masters' admin ports (`host:port`) by id, when they have them.
    pub master_admins: Vec<String>,
    admin: bool,
    proxied: bool,
    /// The CA file of the development certificates, when TLS is on.
    pub tls_ca_file: Option<PathBuf>,
    /// The cluster secret file, when one is set.
    pub cluster_secret_file: Option<PathBuf>,
    shutdown: CancellationToken,
    master_tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    workers: Vec<LocalWorker>,
}

async fn bind() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")
}

/// The config of master `i` of `masters`: its own address and data directory, and with more
/// than one master, the peers' addresses.
fn master_config(options: &LocalOptions, masters: &[String], i: usize) -> MasterConfig {
    let raft = masters.len() > 1;
    MasterConfig {
        listen: masters[i].clone(),
        advertise: masters[i].clone(),
        data_dir: options.data_dir.join(format!("master-{i}")),
        peers: if raft { masters.to_vec() } else { Vec::new() },
        // Set even for a lone master: unset, the id would come from the host name.
        id: Some(i as u64),
        ..options.master.clone()
    }
}

impl LocalCluster {
    /// Starts the masters and workers and waits until every worker has registered.
    pub async fn start(mut options: LocalOptions) -> anyhow::Result<LocalCluster> {
        if options.workers == 0 {
            bail!("--workers must be at least 1");
        }
        if options.masters == 0 {
            bail!("--masters must be at least 1");
        }
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("creating {}", options.data_dir.display()))?;
        let tls_ca_file = options.prepare_security()?;
        let cluster_secret_file = (!options.master.cluster_secret_file.is_empty())
            .then(|| PathBuf::from(&options.master.cluster_secret_file));
        let shutdown = CancellationToken::new();
        let mut listeners = Vec::new();
        for _ in 0..options.masters {
            listeners.push(bind().await?);
        }
        let masters = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.to_string()))
            .collect::<anyhow::Result<Vec<String>>>()?;
        let mut master_tasks = Vec::new();
        let mut master_admins = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let mut config = master_config(&options, &masters, i);
            config.admin_listen = String::new();
            let admin = if options.admin {
                let admin = bind().await?;
                config.admin_listen = admin.local_addr()?.to_string();
                master_admins.push(config.admin_listen.clone());
                Some(admin)
            } else {
                None
            };
            let master = tokio::spawn(sluice_master::run_with_admin(
                config,
                listener,
                admin,
                shutdown.child_token(),
            ));
            master_tasks.push(tokio::spawn(async move { Ok(master.await??) }));
        }
        let mut cluster = LocalCluster {
            master_addr: masters.join(","),
            masters,
            master_admins,
            admin: options.admin,
            proxied: options.proxied,
            tls_ca_file,
            cluster_secret_file,
            shutdown,
            master_tasks,
            workers: Vec::new(),
        };
        for i in 0..options.workers {
            let data_dir = options.data_dir.join(format!("worker-{i}"));
            let data_dirs = if options.disks_per_worker > 1 {
                (0..options.disks_per_worker)
                    .map(|d| data_dir.join(format!("disk-{d}")))
                    .collect()
            } else {
                vec![data_dir.clone()]
            };
            let mut config = WorkerConfig {
                id: format!("worker-{i}"),
                data_dirs,
                ..options.worker.clone()
            };
            if let Some(configure) = options.configure_worker {
                configure(i, &mut config);
            }
            cluster.start_worker(config, data_dir).await?;
        }
        cluster.wait_registered().await?;
        Ok(cluster)
    }

    async fn start_worker(
        &mut self,
        mut config: WorkerConfig,
        data_dir: PathBuf,
    ) -> anyhow::Result<()> {
        let push = bind().await?;
        let fetch = bind().await?;
        let admin = if self.admin {
            Some(bind().await?)
        } else {
            None
        };
        let admin_addr = admin
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string());
        config.master = self.master_addr.clone();
        // The effective config (`sluice admin config`) names the ports actually bound.
        config.push_listen = push.local_addr()?.to_string();
        config.fetch_listen = fetch.local_addr()?.to_string();
        config.admin_listen = admin_addr.clone().unwrap_or_default();
        let proxies = if self.proxied {
            let push_proxy = Proxy::start(Some(push.local_addr()?)).await?;
            let fetch_proxy = Proxy::start(Some(fetch.local_addr()?)).await?;
            config.advertise_push_port = push_proxy.addr().port();
            config.advertise_fetch_port = fetch_proxy.addr().port();
            Some((push_proxy, fetch_proxy))
        } else {
            None
        };
        // The ports the worker itself listens on (a proxy in front of it forwards to them); the
        // master knows the advertised push port.
        let advertised_push_port = u32::from(match config.advertise_push_port {
            0 => push.local_addr()?.port(),
            port => port,
        });
        let info = pb::WorkerInfo {
            id: config.id.clone(),
            host: config.host.clone(),
            push_port: u32::from(push.local_addr()?.port()),
            fetch_port: u32::from(fetch.local_addr()?.port()),
            admin_port: admin
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or(0, |a| u32::from(a.port())),
            ..pb::WorkerInfo::default()
        };
        let shutdown = self.shutdown.child_token();
        let task = tokio::spawn(sluice_worker::run(
            config.clone(),
            sluice_worker::Listeners { push, fetch, admin },
            shutdown.clone(),
        ));
        let task = tokio::spawn(async move { Ok(task.await??) });
        self.workers.push(LocalWorker {
            info,
            admin: admin_addr,
            config,
            data_dir,
            shutdown,
            task: Some(task),
            proxies,
            advertised_push_port,
        });
        Ok(())
    }

    /// Makes worker `index`'s links sick: `push` on its push port's proxy (writers, and
    /// primaries forwarding to it), `fetch` on its fetch port's (readers). Needs
    /// [`LocalOptions::proxied`]; `Shape::default()` heals them.
    pub fn shape_worker(&self, index: usize, push: Shape, fetch: Shape) -> anyhow::Result<()> {
        let worker = self.workers.get(index).context("no such worker")?;
        let (push_proxy, fetch_proxy) = worker
            .proxies
            .as_ref()
            .context("the cluster was started without proxies (LocalOptions::proxied)")?;
        push_proxy.shape(push);
        fetch_proxy.shape(fetch);
        Ok(())
    }

    /// Starts worker `index` again after [`LocalCluster::stop_worker`]: same id, same data
    /// directories, new ports (as a StatefulSet pod comes back), and waits until the master
    /// knows its new addresses.
    pub async fn restart_worker(&mut self, index: usize) -> anyhow::Result<()> {
        self.stop_worker(index).await?;
        let old = self.workers.remove(index);
        self.start_worker(old.config, old.data_dir).await?;
        let restarted = self.workers.pop().context("restarted worker")?;
        self.workers.insert(index, restarted);
        self.wait_registered().await
    }

    /// Waits until the master knows every running worker as alive at its current push port.
    async fn wait_registered(&mut self) -> anyhow::Result<()> {
        let client = self.operator()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            poll.tick().await;
            if let Some(failed) = self
                .workers
                .iter_mut()
                .find(|w| w.task.as_ref().is_some_and(|t| t.is_finished()))
            {
                let id = failed.info.id.clone();
                if let Some(task) = failed.task.take() {
                    task.await??;
                }
                bail!("worker {id} stopped during start-up");
            }
            if let Ok(status) = client.cluster_status().await {
                let registered = |worker: &LocalWorker| {
                    status.workers.iter().any(|w| {
                        w.alive
                            && w.worker.as_ref().is_some_and(|known| {
                                known.id == worker.info.id
                                    && known.push_port == worker.advertised_push_port
                            })
                    })
                };
                let mut running = self.workers.iter().filter(|w| w.task.is_some());
                if running.all(registered) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("workers did not register with the master within {READY_TIMEOUT:?}");
            }
        }
    }

    /// A client of this cluster with default settings (TLS on when the cluster has it).
    pub fn client(&self) -> anyhow::Result<SluiceClient> {
        Ok(SluiceClient::new(self.client_config())?)
    }

    /// The default settings of a client of this cluster: its masters, and TLS with the
    /// cluster's CA when it has TLS on.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.master_addr.clone());
        if let Some(ca) = &self.tls_ca_file {
            config.tls = true;
            config.tls_ca_file = ca.to_string_lossy().into_owned();
            config.tls_server_name = LOCAL_SERVER_NAME.into();
        }
        config
    }

    /// A client signing its master calls as the operator when the cluster has a secret.
    fn operator(&self) -> anyhow::Result<SluiceClient> {
        let client = self.client()?;
        let Some(secret) = &self.cluster_secret_file else {
            return Ok(client);
        };
        let keyring = sluice_protocol::auth::Keyring::load(secret)?;
        Ok(client.as_operator(&keyring))
    }

    pub fn workers(&self) -> Vec<pb::WorkerInfo> {
        self.workers.iter().map(|w| w.info.clone()).collect()
    }

    /// The data directory of worker `index` (holding its disks' directories when it has several).
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.workers[index].data_dir.clone()
    }

    /// The one JSON line `sluice local` prints when ready.
    pub fn ready_line(&self) -> String {
        let workers: Vec<serde_json::Value> = self
            .workers
            .iter()
            .map(|w| {
                serde_json::json!({
                    "id": w.info.id,
                    "push": w.info.push_addr(),
                    "fetch": w.info.fetch_addr(),
                    "admin": w.admin,
                })
            })
            .collect();
        let mut line = serde_json::json!({
            "master": self.master_addr,
            "masters": self.masters,
            "admin": self.master_admins,
            "status_page": self.status_page(),
            "workers": workers,
        });
        // What a client needs to reach a secured cluster, only when it is secured.
        if let Some(secret) = &self.cluster_secret_file {
            line["cluster_secret_file"] = serde_json::json!(secret);
        }
        if let Some(ca) = &self.tls_ca_file {
            line["tls_ca_file"] = serde_json::json!(ca);
            line["tls_server_name"] = serde_json::json!(LOCAL_SERVER_NAME);
        }
        line.to_string()
    }

    /// The URL of the first master's status page, when masters have admin ports.
    pub fn status_page(&self) -> Option<String> {
        let scheme = if self.tls_ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        self.master_admins
            .first()
            .map(|a| format!("{scheme}://{a}/"))
    }

    /// The workers' admin ports (`host:port`), by index, when they have them.
    pub fn worker_admins(&self) -> Vec<Option<String>> {
        self.workers.iter().map(|w| w.admin.clone()).collect()
    }

    /// Stops worker `index` (its ports close; the master will declare it lost).
    pub async fn stop_worker(&mut self, index: usize) -> anyhow::Result<()> {
        let worker = &mut self.workers[index];
        worker.shutdown.cancel();
        if let Some(task) = worker.task.take() {
            task.await??;
        }
        Ok(())
    }

    /// Waits for worker `index` to stop by itself (a drain ends with it), at most `timeout`.
    pub async fn worker_stopped(
        &mut self,
        index: usize,
        timeout: std::time::Duration,
    ) -> anyhow::Result<()> {
        let worker = &mut self.workers[index];
        let Some(task) = worker.task.as_mut() else {
            return Ok(());
        };
        tokio::time::timeout(timeout, task)
            .await
            .context("the worker did not stop in time")???;
        worker.task = None;
        Ok(())
    }

    /// Stops everything and waits for every task.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut result = Ok(());
        for worker in &mut self.workers {
            if let Some(task) = worker.task.take() {
                if let Err(e) = task.await.map_err(anyhow::Error::from).and_then(|r| r) {
                    result = Err(e);
                }
            }
        }
        for master in self.master_tasks.drain(..) {
            if let Err(e) = master.await.map_err(anyhow::Error::from).and_then(|r| r) {
                result = Err(e);
            }
        }
        result
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
