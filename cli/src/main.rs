//! `sluice`: the one binary. Parses arguments, installs logging, binds listeners and calls the
//! libraries.

mod alloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use sluice::bench::{self, BenchOptions};
use sluice::config;
use sluice::local::{LocalCluster, LocalOptions};
use sluice::reference::{self, Role};
use sluice_master::MasterConfig;
use sluice_protocol::tls::TlsClient;
use sluice_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "A remote shuffle service for Apache Spark"
)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a master. Settings: `--config FILE`, SLUICE_MASTER_<KEY> variables, `--<key> VALUE`
    /// (the keys are listed below). Prints one JSON line with its address once listening.
    Master {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        settings: Vec<String>,
    },
    /// Run a worker. Settings: `--config FILE`, SLUICE_WORKER_<KEY> variables, `--<key> VALUE`
    /// (the keys are listed below). Prints one JSON line with its id and addresses once the
    /// master has accepted it.
    Worker {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        settings: Vec<String>,
    },
    /// Run masters and N workers in this process on loopback ports. Prints one JSON line with
    /// their addresses when ready (`master`: the masters as one comma-separated list, as workers
    /// and clients take it; `masters`: each one); stops on SIGINT or SIGTERM.
    Local {
        /// Masters: 1, or a Raft group (3 or 5), each keeping its state under
        /// `<data-dir>/master-<i>`.
        #[arg(long, default_value_t = 1)]
        masters: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long)]
        data_dir: PathBuf,
        /// Data directories (disks) per worker, each with its own flusher.
        #[arg(long, default_value_t = 1)]
        disks_per_worker: usize,
        /// Memory budget of each worker (e.g. 512MiB).
        #[arg(long)]
        memory_budget: Option<bytesize::ByteSize>,
        /// TLS on every port and a random cluster secret (both made under the data directory;
        /// their paths are in the ready line). Clients then need application auth.
        #[arg(long)]
        secure: bool,
        /// TLS on every port only (development certificates under the data directory).
        #[arg(long)]
        tls: bool,
    },
    /// Operate a running cluster.
    Admin {
        /// Talk to admin ports over HTTPS and to masters with TLS, trusting the CAs of this
        /// PEM file.
        #[arg(long, global = true, env = "SLUICE_ADMIN_TLS_CA_FILE")]
        tls_ca_file: Option<PathBuf>,
        /// Name expected in the servers' certificates (default: the host dialed).
        #[arg(
            long,
            global = true,
            default_value = "",
            env = "SLUICE_ADMIN_TLS_SERVER_NAME"
        )]
        tls_server_name: String,
        /// The cluster secret file of a cluster that runs with one: changes (decommission,
        /// membership) and master queries are signed with it as the operator.
        #[arg(long, global = true, env = "SLUICE_ADMIN_CLUSTER_SECRET_FILE")]
        cluster_secret_file: Option<PathBuf>,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Push a shuffle through a cluster and read it back; prints a JSON report as its last line.
    Bench {
        /// Master of an existing cluster (`host:port`, or every master separated by commas);
        /// without it an embedded cluster is started.
        #[arg(long)]
        master: Option<String>,
        /// Workers of the embedded cluster.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long)]
        maps: u32,
        #[arg(long)]
        partitions: u32,
        /// Bytes each map writes (e.g. 64MiB).
        #[arg(long)]
        bytes_per_map: bytesize::ByteSize,
        /// Size of each record (e.g. 100, 1KiB).
        #[arg(long, default_value = "100")]
        record_size: bytesize::ByteSize,
        /// Check every record's content and count lost and duplicated records exactly.
        #[arg(long)]
        verify: bool,
        /// Maps written, and partition ranges read, at once (default: 2 x cores).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Bytes sent through loopback TCP to measure the machine's limit (0 skips it).
        #[arg(long, default_value = "2GiB")]
        loopback_bytes: bytesize::ByteSize,
        /// Copies of every batch, 1 or 2 (default: 2 when the cluster has two or more workers).
        /// With 2, a replication-1 run of the same workload is reported beside it.
        #[arg(long, default_value_t = 0)]
        replication: u32,
        /// Serve the benchmark client's metrics on http://ADDR/metrics while it runs (e.g.
        /// 127.0.0.1:9097, or port 0 for any; the address is printed on stderr).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Measure what the servers' metrics cost: run the workload ROUNDS times on an embedded
        /// cluster with `metrics = true` and as often with `metrics = false`, alternating, and
        /// report the median throughputs and their ratio (`metrics_overhead`).
        #[arg(long, value_name = "ROUNDS", num_args = 0..=1, default_missing_value = "3")]
        metrics_overhead: Option<u32>,
        /// TLS on every port of the embedded cluster (development certificates), the client
        /// dialing with it.
        #[arg(long)]
        tls: bool,
        /// A cluster secret on the embedded cluster, the client authenticating as its
        /// application (every frame tagged, every master call signed).
        #[arg(long)]
        auth: bool,
        /// Measure what security costs: run the workload ROUNDS times per configuration (plain,
        /// auth, TLS on every port, both) on embedded clusters, taking turns, and report the
        /// median throughputs and their ratios to plain (`security_overhead`).
        #[arg(long, value_name = "ROUNDS", num_args = 0..=1, default_missing_value = "3")]
        security_overhead: Option<u32>,
        /// Measure what a sick cluster costs: run the workload ROUNDS times per condition
        /// (clean; every disk write held 100 ms; every worker's push and fetch links 20 ms +
        /// 0-10 ms jitter each way) on embedded clusters, taking turns, and report the median
        /// times and their slowdown against clean (`degraded`).
        #[arg(long, value_name = "ROUNDS", num_args = 0..=1, default_missing_value = "3")]
        degraded: Option<u32>,
        /// How the client compresses batches.
        #[arg(long, value_enum, default_value_t = bench::Codec::Lz4)]
        compression: bench::Codec,
        /// Raw bytes LZ4 alone (and zstd alone, with `--compression zstd`) compresses and
        /// decompresses on as many threads as this process has, to report what the codec can
        /// do here (0 skips it; default: the --loopback-bytes amount, so --loopback-bytes 0
        /// skips both measures of the machine).
        #[arg(long)]
        lz4_bytes: Option<bytesize::ByteSize>,
        /// After the benchmark's shuffle is deleted, how long to wait before the workers'
        /// settled RSS is read (e.g. 60s).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// Where the embedded cluster keeps its data (in a temporary directory made inside
        /// DIR; default: the system's temporary directory). A tmpfs such as /dev/shm takes the
        /// disk out of the figures.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// With --master: pid of a worker on this machine, whose CPU time and memory are then
        /// reported (repeat the flag for more).
        #[arg(long = "worker-pid", requires = "master")]
        worker_pids: Vec<u32>,
    },
    /// Write development TLS files into DIR: ca.pem and ca-key.pem (kept when present, so a
    /// certificate issued again chains to the same CA), cert.pem and key.pem. Prints their
    /// paths as JSON. Not for production.
    #[command(hide = true)]
    DevCerts {
        #[arg(long)]
        out: PathBuf,
        /// DNS names in the certificate (repeat the flag for more).
        #[arg(long, default_values_t = vec!["localhost".to_string()])]
        name: Vec<String>,
        /// IP addresses in the certificate (repeat the flag for more).
        #[arg(long, default_values_t = vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()])]
        ip: Vec<std::net::IpAddr>,
        /// Serial number of the certificate (random when not given).
        #[arg(long)]
        serial: Option<u64>,
    },
    /// Print the configuration reference (`docs/config.md`) as markdown.
    #[command(hide = true)]
    ConfigReference,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// The masters: each one's view of the leader, term, applied log index and voters; or
    /// add / remove a master (Raft membership change through the leader).
    Masters {
        /// Master endpoints, comma-separated (host:port,...).
        #[arg(long)]
        master: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        change: Option<MastersChange>,
    },
    /// The workers as the leading master sees them: state, disks, memory, throughput, last
    /// heartbeat.
    Workers(ListingArgs),
    /// The registered shuffles: maps done, bytes, partitions, epochs, replication, state.
    Shuffles(ListingArgs),
    /// The applications: their shuffles and when they were last heard from.
    Apps(ListingArgs),
    /// Decommission a worker: it takes no new partitions and keeps serving what it holds; with
    /// `--deadline` it drains instead: hands over to other workers, within the deadline, every
    /// copy no other copy outlives, reports the rest lost, and exits. Either WORKER_ID through
    /// the leading master, or `--worker` on the worker's own admin port (what a Kubernetes
    /// preStop hook runs).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["worker_id", "worker"])))]
    Decommission {
        /// The worker's id, as `sluice admin workers` lists it.
        worker_id: Option<String>,
        /// Master admin addresses (host:port), comma-separated; tried in turn until the leader
        /// answers.
        #[arg(long, default_value = sluice::admin::DEFAULT_MASTER_ADMIN, conflicts_with = "worker")]
        master: String,
        /// The worker's admin address (host:port) instead of an id.
        #[arg(long)]
        worker: Option<String>,
        /// Drain within this (`30s` for a spot reclaim, `1h` for a planned drain), then exit.
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<Duration>,
    },
    /// The effective configuration of any master or worker, from its admin port: TOML, or JSON.
    Config {
        /// The process's admin address (host:port).
        #[arg(long)]
        admin: String,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ListingArgs {
    /// Master admin addresses (host:port), comma-separated; tried in turn until the leader
    /// answers.
    #[arg(long, default_value = sluice::admin::DEFAULT_MASTER_ADMIN)]
    master: String,
    /// Print the JSON the master serves instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum MastersChange {
    /// Add master ID reachable at ADDR (start it first, with `peers` listing every master
    /// including itself). It catches up with the log, then votes.
    Add { id: u64, addr: String },
    /// Remove master ID (stop it afterwards).
    Remove { id: u64 },
}

/// The command line, with the master's and worker's keys listed at the end of their help. The
/// lists are built from the config structs at run time, so they cannot go stale.
fn command_line() -> clap::Command {
    let with_keys = |role: Role| {
        move |command: clap::Command| {
            let unavailable = |e: anyhow::Error| format!("(the key list is unavailable: {e:#})");
            command
                .after_help(reference::short_help(role).unwrap_or_else(unavailable))
                .after_long_help(reference::long_help(role).unwrap_or_else(unavailable))
        }
    };
    Cli::command()
        .mut_subcommand(Role::Master.name(), with_keys(Role::Master))
        .mut_subcommand(Role::Worker.name(), with_keys(Role::Worker))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("signal received, shutting down");
        token.cancel();
    });
    Ok(())
}

/// A worker's signals: SIGTERM drains it within `drain` (it stops when the drain ends; with
/// `drain` 0 at once), SIGINT or a second SIGTERM cancels `token` at once.
fn drain_on_signal(
    drainer: sluice_worker::Drainer,
    drain: Duration,
    token: CancellationToken,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let drains = tokio::select! {
            _ = interrupt.recv() => false,
            _ = terminate.recv() => !drain.is_zero(),
        };
        if drains {
            tracing::info!(?drain, "SIGTERM: draining, then stopping");
            let draining = tokio::spawn(async move { drainer.drain(drain, "SIGTERM").await });
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = draining => return,
            }
        }
        tracing::info!("signal received, shutting down");
        token.cancel();
    });
    Ok(())
}

fn load<T>(settings: &[String], env_prefix: &str) -> anyhow::Result<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    let (file, flags) = config::parse_flags(settings)?;
    config::load(
        file.as_deref().map(Path::new),
        env_prefix,
        std::env::vars(),
        &flags,
    )
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))
}

/// Binds an admin port; an empty address turns it off.
async fn bind_admin(addr: &str) -> anyhow::Result<Option<TcpListener>> {
    sluice_ops::admin::bind(addr)
        .await
        .with_context(|| format!("binding the admin address {addr}"))
}

fn local_addr(listener: Option<&TcpListener>) -> Option<String> {
    listener
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Master { settings } => {
            let config: MasterConfig = load(&settings, "SLUICE_MASTER_")?;
            let listener = bind(&config.listen, "master").await?;
            let admin = bind_admin(&config.admin_listen).await?;
            println!(
                "{}",
                serde_json::json!({
                    "master": listener.local_addr()?.to_string(),
                    "admin": local_addr(admin.as_ref()),
                })
            );
            let shutdown = CancellationToken::new();
            cancel_on_signal(shutdown.clone())?;
            sluice_master::run_with_admin(config, listener, admin, shutdown).await?;
        }
        Command::Worker { settings } => {
            let config: WorkerConfig = load(&settings, "SLUICE_WORKER_")?;
            let listeners = sluice_worker::Listeners {
                push: bind(&config.push_listen, "push").await?,
                fetch: bind(&config.fetch_listen, "fetch").await?,
                admin: bind_admin(&config.admin_listen).await?,
            };
            let admin = local_addr(listeners.admin.as_ref());
            let drain = config.shutdown_drain;
            let worker = sluice_worker::Worker::start(config, listeners)?;
            let info = worker.info();
            let ready = serde_json::json!({
                "id": info.id,
                "push": info.push_addr(),
                "fetch": info.fetch_addr(),
                "admin": admin,
            });
            let mut registered = worker.registered();
            let shutdown = CancellationToken::new();
            drain_on_signal(worker.drainer(), drain, shutdown.clone())?;
            let serving = tokio::spawn(worker.serve(shutdown.clone()));
            // Ready means placeable: print once the master has accepted the registration.
            tokio::select! {
                _ = registered.wait_for(|registered| *registered) => println!("{ready}"),
                _ = shutdown.cancelled() => {}
            }
            serving.await??;
        }
        Command::Local {
            masters,
            workers,
            data_dir,
            disks_per_worker,
            memory_budget,
            secure,
            tls,
        } => {
            let mut options = LocalOptions::new(workers, data_dir);
            options.tls = tls || secure;
            options.secret = secure;
            options.masters = masters;
            options.disks_per_worker = disks_per_worker;
            if let Some(budget) = memory_budget {
                options.worker.memory_budget = budget;
            }
            let shutdown = CancellationToken::new();
            cancel_on_signal(shutdown.clone())?;
            let cluster = LocalCluster::start(options).await?;
            println!("{}", cluster.ready_line());
            if let Some(url) = cluster.status_page() {
                eprintln!("status page: {url}");
            }
            shutdown.cancelled().await;
            cluster.shutdown().await?;
        }
        Command::Admin {
            tls_ca_file,
            tls_server_name,
            cluster_secret_file,
            command,
        } => {
            if let Some(file) = cluster_secret_file {
                let keyring = sluice_protocol::auth::Keyring::load(&file)?;
                sluice::http::set_operator(sluice_protocol::rpc::Credentials::cluster(
                    sluice_protocol::auth::Principal::Admin,
                    &keyring,
                ));
            }
            if let Some(ca) = tls_ca_file {
                let tls = TlsClient::load(&ca, &tls_server_name, Duration::from_secs(10))?;
                sluice::http::set_tls(tls);
            }
            admin(command).await?
        }
        Command::DevCerts {
            out,
            name,
            ip,
            serial,
        } => {
            let files = sluice::certs::issue(&out, &name, &ip, serial)?;
            println!("{}", serde_json::to_string(&files)?);
        }
        Command::Bench {
            master,
            workers,
            maps,
            partitions,
            bytes_per_map,
            record_size,
            verify,
            concurrency,
            loopback_bytes,
            replication,
            admin_listen,
            metrics_overhead,
            tls,
            auth,
            security_overhead,
            degraded,
            compression,
            lz4_bytes,
            settle,
            data_dir,
            worker_pids,
        } => {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let options = BenchOptions {
                master,
                workers,
                maps,
                partitions,
                bytes_per_map: bytes_per_map.as_u64(),
                record_size: record_size.as_u64() as usize,
                verify,
                concurrency: concurrency.unwrap_or(2 * cores),
                loopback_bytes: loopback_bytes.as_u64(),
                replication,
                admin_listen,
                metrics_overhead,
                tls,
                auth,
                security_overhead,
                compression,
                lz4_bytes: lz4_bytes.unwrap_or(loopback_bytes).as_u64(),
                settle,
                data_dir,
                worker_pids,
                degraded,
                condition: bench::Condition::Clean,
            };
            let report = bench::run(&options).await?;
            if let Some(error) = &report.error {
                eprintln!("bench failed: {error}");
            }
            println!("{}", serde_json::to_string(&report)?);
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::ConfigReference => print!("{}", reference::markdown()?),
    }
    Ok(ExitCode::SUCCESS)
}

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    use sluice::admin::{self, Listing};
    match command {
        AdminCommand::Masters {
            master,
            json,
            change,
        } => match change {
            None => admin::print_status(&master, json).await,
            Some(MastersChange::Add { id, addr }) => {
                admin::change(&master, Some((id, addr)), None).await
            }
            Some(MastersChange::Remove { id }) => admin::change(&master, None, Some(id)).await,
        },
        AdminCommand::Workers(args) => {
            admin::print_listing(&args.master, Listing::Workers, args.json).await
        }
        AdminCommand::Shuffles(args) => {
            admin::print_listing(&args.master, Listing::Shuffles, args.json).await
        }
        AdminCommand::Apps(args) => {
            admin::print_listing(&args.master, Listing::Apps, args.json).await
        }
        AdminCommand::Decommission {
            worker_id,
            master,
            worker,
            deadline,
        } => match (worker_id, worker) {
            (_, Some(worker)) => admin::decommission_worker(&worker, deadline).await,
            (Some(id), None) => admin::decommission_through_master(&master, &id, deadline).await,
            (None, None) => anyhow::bail!("name a worker: WORKER_ID or --worker ADDR"),
        },
        AdminCommand::Config { admin, json } => admin::print_config(&admin, json).await,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command_line().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.log_format);
    sluice_worker::memory::on_budget_full(alloc::purge_freed);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(alloc::release_thread_cache)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
