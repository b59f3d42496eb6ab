//! Workers that are told to go: SIGTERM with a grace period (`shutdown_drain`), as Kubernetes
//! stops a pod or a cloud reclaims a spot node. The worker drains (it hands over to other
//! workers every copy no other copy outlives, reports the rest lost) and exits by itself.
//!
//! - `sigterm-drain`: SIGTERM with 30 s to drain, half-way through the writes. At replication 1
//!   too, every record must be read exactly once: nothing may be lost when the data fits the
//!   hand-over rate.
//! - `drain-while-reading`: two workers SIGTERMed one after the other while the reducer reads;
//!   the reader finds the copies they handed over where the master says they are now.
//! - `preempt-short`: a grace period too short for the data (1 s, less than a drain keeps to
//!   report): the worker's copies are reported lost at once, and the reader says so
//!   (`DataLost`), never returning short data.
//!
//! - `drain-rate`: one of two workers SIGTERMed once eight times the usual workload is
//!   committed at replication 1 (half of it on that worker): the hand-over rate to a peer, in
//!   MB/s of the drain's own time, with every record read back exactly once.
//! - `drain-rate-s3`: the same with an S3 DFS (moto's S3 server, from PyPI, started here;
//!   skipped without `moto_server`): the drain uploads, the other worker serves from S3.
//!
//! Each reports the copies and bytes moved, the time taken against the deadline, and lost /
//! duplicated records.

use std::time::{Duration, Instant};

use crate::cluster::{toml_text, Skipped, WorkerSpec};
use crate::setup::{four_workers, write_with_faults, Ctx, Observed, Setup, BATCH_SIZE};
use crate::workload::Reads;

/// The grace period of the scenarios that must lose nothing.
const GRACE: Duration = Duration::from_secs(30);

fn draining_workers(grace: Duration) -> Vec<WorkerSpec> {
    four_workers()
        .into_iter()
        .map(|w| w.set("shutdown_drain", format!("\"{}ms\"", grace.as_millis())))
        .collect()
}

/// What a drained worker logged of its drain: `moved`, `moved_bytes`, `lost`, `covered`,
/// `restored`.
fn drain_figures(log: &str) -> Option<(u64, u64, u64, u64, u64)> {
    let field = |key: &str| log_field(log, key).and_then(|v| v.parse().ok());
    Some((
        field("moved")?,
        field("moved_bytes")?,
        field("lost")?,
        field("covered")?,
        field("restored")?,
    ))
}

/// Field `key` of the drained worker's last drain report line.
fn log_field(log: &str, key: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("drained; stopping"))?;
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
        .map(String::from)
}

/// Drains that had time for everything lose nothing: a read error is a failure, also at
/// replication 1.
fn nothing_may_be_lost(observed: &mut Observed) {
    if let Some(e) = &observed.read_error {
        observed
            .failures
            .push(format!("drains within their grace period lost data: {e}"));
    }
}

/// Writes the whole workload; when that fails, stops the cluster (`None`).
async fn write_everything(setup: Setup, observed: &mut Observed) -> Option<Setup> {
    setup.write_all(observed).await;
    if observed.write_error.is_some() {
        setup.cluster.shutdown().await;
        return None;
    }
    Some(setup)
}

/// What a drain did, from the drained worker's log: copies moved, bytes moved, copies lost,
/// copies covered by another copy.
type Figures = (u64, u64, u64, u64, u64);

/// SIGTERMs worker `victim`, waits for it to exit (the grace period and 5 s more), and says
/// what its drain did. A worker still running after that is a failure.
async fn drain_one(
    setup: &mut Setup,
    failures: &mut Vec<String>,
    victim: usize,
    grace: Duration,
) -> anyhow::Result<(String, Option<Figures>)> {
    let id = setup.id(victim);
    let started = Instant::now();
    if !setup.cluster.terminate(victim) {
        anyhow::bail!("{id} was not running");
    }
    let exited = setup
        .cluster
        .exited(victim, grace + Duration::from_secs(5))
        .await;
    let took = started.elapsed();
    if !exited {
        failures.push(format!(
            "{id} did not exit within {:?} of SIGTERM",
            grace + Duration::from_secs(5)
        ));
    }
    let figures = drain_figures(&setup.cluster.log_text(victim));
    let what = match figures {
        Some((moved, bytes, lost, covered, restored)) => {
            format!(
                "SIGTERM {id} ({:?} to drain): exited after {:.2} s, {moved} copies handed over \
                 ({:.1} MB), {lost} reported lost, {covered} covered by another copy ({restored} \
                 of them handed over too, keeping their partition's replication)",
                grace,
                took.as_secs_f64(),
                bytes as f64 / 1e6
            )
        }
        None => format!(
            "SIGTERM {id}: exited after {:.2} s without a drain report",
            took.as_secs_f64()
        ),
    };
    Ok((what, figures))
}

/// SIGTERM with 30 s to drain half-way through the writes; nothing may be lost.
pub(crate) async fn sigterm_drain(ctx: &Ctx) -> anyhow::Result<Observed> {
    let mut setup = Setup::start(ctx, &draining_workers(GRACE), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let victim = setup.primary_of(0)?;
    let at = [ctx.sizes.mid_write()];
    write_with_faults(&mut setup, &mut observed, &at, async move |s, _| {
        let mut failures = Vec::new();
        let (what, _) = drain_one(s, &mut failures, victim, GRACE).await?;
        if !failures.is_empty() {
            anyhow::bail!("{}", failures.join("; "));
        }
        Ok(what)
    })
    .await?;
    let figures = drain_figures(&setup.cluster.log_text(victim));
    if matches!(figures, Some((0, _, _, 0, _))) {
        observed.not_injected = Some("the drained worker held nothing to hand over".into());
    }
    setup.read_if_written(&mut observed).await;
    nothing_may_be_lost(&mut observed);
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// Two workers SIGTERMed one after the other while the reducer reads; nothing may be lost.
pub(crate) async fn drain_while_reading(ctx: &Ctx) -> anyhow::Result<Observed> {
    let setup = Setup::start(ctx, &draining_workers(GRACE), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let Some(mut setup) = write_everything(setup, &mut observed).await else {
        return Ok(observed);
    };
    ctx.phase.set("reading");
    let mut reads = Reads::open(&setup.client, &setup.key, &setup.workload).await?;
    let raw = setup.workload.records() * setup.workload.record_len as u64;
    let third = (raw / BATCH_SIZE as u64 / 3).max(1);
    let mut drained: Vec<usize> = Vec::new();
    let mut result = Ok(());
    for k in 1..=2u64 {
        match reads.blocks(third * k).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        // The primary of the partition being read, else any worker still up.
        let partition = reads.tally.last_partition.unwrap_or(0);
        let victim = setup
            .primary_of(partition)
            .ok()
            .filter(|v| !drained.contains(v))
            .or_else(|| (0..setup.cluster.workers.len()).find(|v| !drained.contains(v)))
            .ok_or_else(|| anyhow::anyhow!("no worker left to drain"))?;
        ctx.phase
            .set(format!("draining worker {victim} while reading"));
        let (what, _) = drain_one(&mut setup, &mut observed.failures, victim, GRACE).await?;
        observed
            .injected
            .push(format!("after {} blocks read: {what}", third * k));
        drained.push(victim);
    }
    if result.is_ok() {
        ctx.phase.set("reading after the drains");
        result = reads.to_end().await;
    }
    if drained.len() < 2 {
        observed.not_injected = Some("the reader ended before two workers were drained".into());
    }
    observed.tally = reads.tally;
    observed.read_error = result.err();
    nothing_may_be_lost(&mut observed);
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// A grace period too short for the data, once the shuffle is committed: the loss must be
/// reported (`DataLost`), at once, never silent.
pub(crate) async fn preempt_short(ctx: &Ctx) -> anyhow::Result<Observed> {
    let grace = Duration::from_secs(1);
    let setup = Setup::start(ctx, &draining_workers(grace), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    let Some(mut setup) = write_everything(setup, &mut observed).await else {
        return Ok(observed);
    };
    setup.committed().await?;
    let victim = setup.primary_of(0)?;
    let (what, figures) = drain_one(&mut setup, &mut observed.failures, victim, grace).await?;
    observed.injected.push(format!("after the commit: {what}"));
    if matches!(figures, Some((_, _, 0, _, _))) {
        observed.not_injected =
            Some("the drain lost nothing: the data fit the grace period".into());
    }
    let started = Instant::now();
    setup.read_all(&mut observed).await;
    let took = started.elapsed();
    match &observed.read_error {
        Some(e) if e.is_data_loss() => observed.injected.push(format!(
            "the reader reported the loss after {:.2} s",
            took.as_secs_f64()
        )),
        _ if ctx.replication == 1 => observed.failures.push(
            "a worker left without handing over its copies, yet the reader reported no loss".into(),
        ),
        _ => {}
    }
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// moto's S3 server on a free loopback port with one bucket, killed on drop.
struct Moto {
    _child: tokio::process::Child,
    endpoint: String,
}

const BUCKET: &str = "sluice-chaos";

async fn moto() -> anyhow::Result<Moto> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let binary = std::env::var("SLUICE_MOTO").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let args = ["-H", "127.0.0.1", "-p", &port.to_string()];
    let spawn = |program: &str, pre: &[&str]| {
        tokio::process::Command::new(program)
            .args(pre)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    // The script pip installs, or the module itself when the script is not on PATH.
    let child = spawn(&binary, &[])
        .or_else(|_| spawn("python3", &["-m", "moto.server"]))
        .map_err(|e| {
            Skipped(format!(
                "cannot start {binary} (pip install 'moto[server]'): {e}"
            ))
        })?;
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut stream = loop {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => anyhow::bail!("moto did not start on {addr}: {e}"),
        }
    };
    let request = format!(
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    if !answer.starts_with("HTTP/1.1 200") {
        anyhow::bail!("moto did not create the bucket: {answer}");
    }
    Ok(Moto {
        _child: child,
        endpoint: format!("http://{addr}"),
    })
}

/// Eight times the usual workload committed at replication 1 on two workers, then one of them
/// SIGTERMed with two minutes to drain: the rate of its hand-over to the other.
pub(crate) async fn drain_rate(ctx: &Ctx) -> anyhow::Result<Observed> {
    rate(ctx, None).await
}

/// [`drain_rate`] through an S3 DFS: the drained worker uploads, the other serves from S3.
pub(crate) async fn drain_rate_s3(ctx: &Ctx) -> anyhow::Result<Observed> {
    let moto = moto().await?;
    // moto takes any credentials; the workers read these from the environment they inherit.
    std::env::set_var("AWS_ACCESS_KEY_ID", "sluice-chaos");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "sluice-chaos");
    let observed = rate(ctx, Some(&moto)).await;
    drop(moto);
    observed
}

async fn rate(ctx: &Ctx, s3: Option<&Moto>) -> anyhow::Result<Observed> {
    let grace = Duration::from_secs(120);
    let mut workload = ctx.sizes.workload();
    workload.records_per_map *= 8;
    let specs: Vec<WorkerSpec> = draining_workers(grace)
        .into_iter()
        .take(2)
        .map(|spec| match s3 {
            Some(moto) => spec
                .set("dfs", toml_text(&format!("s3://{BUCKET}/{}", ctx.name)))
                .set("dfs_endpoint", toml_text(&moto.endpoint)),
            None => spec,
        })
        .collect();
    let setup = Setup::start(ctx, &specs, workload).await?;
    let mut observed = setup.observed();
    let Some(mut setup) = write_everything(setup, &mut observed).await else {
        return Ok(observed);
    };
    setup.committed().await?;
    let (what, figures) = drain_one(&mut setup, &mut observed.failures, 0, grace).await?;
    let seconds: f64 = log_field(&setup.cluster.log_text(0), "handover_seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    match figures {
        Some((moved, bytes, _, _, _)) if moved > 0 && seconds > 0.0 => {
            observed.injected.push(format!(
                "after the commit: {what}; hand-over rate {:.0} MB/s ({:.1} MB in {seconds:.2} s{})",
                bytes as f64 / seconds / 1e6,
                bytes as f64 / 1e6,
                if s3.is_some() { ", uploaded to S3" } else { ", to a peer" }
            ));
        }
        _ => {
            observed.injected.push(format!("after the commit: {what}"));
            observed.not_injected = Some("the drained worker handed nothing over".into());
        }
    }
    setup.read_all(&mut observed).await;
    nothing_may_be_lost(&mut observed);
    setup.cluster.shutdown().await;
    Ok(observed)
}
