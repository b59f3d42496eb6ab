//! The master's faults. Three masters form a Raft group; its leader is SIGKILLed while the maps
//! push, while the reducers read, and right as the last map ends (the commit then runs on the
//! leader), or SIGSTOPped past the election timeout and SIGCONTed once another master leads: the
//! deposed leader, sent a write directly, must refuse it. A lone master is restarted on its
//! data directory while the maps push, or as the last map ends (it finds the commit pending).
//! The workload, at replication 2, must come out exactly once and intact every time.
//!
//! Each scenario measures its failover with a [`Probe`]: a client of the master list registers
//! a tiny shuffle every 20 ms; the failover is the time from the fault to the first registration
//! sent after it that a master accepted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use sluice_client::SluiceClient;
use sluice_protocol::auth::Principal;
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::{pb, ShuffleKey};

use crate::cluster::{Cluster, Leader, Run};
use crate::setup::{four_workers, write_with_faults, Ctx, Observed, Setup};
use crate::workload::{Reads, Shape, Workload, Writes};

/// Masters of the group.
const MASTERS: usize = 3;
/// How long the masters may take to agree on a new leader, and a rejoining master to catch up.
const ELECTION_LIMIT: Duration = Duration::from_secs(20);
/// A stopped leader stays stopped at least three times the masters' `election_timeout`, past
/// the longest random timeout (twice it).
const ELECTION_TIMEOUT: Duration = crate::cluster::ELECTION_TIMEOUT;
/// How often the probe sends a registration.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Longest one probe registration may take; the probe keeps at most this many in flight.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_INFLIGHT: usize = 64;
/// The app id of the probe's shuffles.
const PROBE_APP: &str = "chaos-probe";

/// What the probe saw.
#[derive(Debug, Default)]
struct ProbeState {
    /// When the fault was injected.
    fault: Option<Instant>,
    /// The earliest accepted registration sent after the fault: how long after the fault it
    /// was accepted.
    failover: Option<Duration>,
    accepted: u64,
    refused: u64,
    last_error: Option<String>,
}

/// Registers a tiny shuffle (one map, one partition, replication 1) through a client of the
/// whole master list every [`PROBE_EVERY`], each in its own task, so a registration stuck on a
/// dead or stopped leader does not delay the next. Stops sending once it measured the
/// failover; stops altogether when dropped.
pub(crate) struct Probe {
    state: Arc<Mutex<ProbeState>>,
    task: tokio::task::JoinHandle<()>,
}

/// Marks the fault of a [`Probe`]; moves into a fault closure.
#[derive(Clone)]
pub(crate) struct FaultMark(Arc<Mutex<ProbeState>>);

impl FaultMark {
    /// Marks the fault as injected now; call right before the signal.
    pub(crate) fn now(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).fault = Some(Instant::now());
    }
}

impl Probe {
    /// Starts probing the masters in `master_addr` (comma-separated) and waits until one of
    /// them accepted a registration, so a failover measured later is one.
    pub(crate) async fn start(run: &Run, master_addr: &str) -> anyhow::Result<Probe> {
        let client = SluiceClient::new(run.client_config(master_addr, 1))?;
        let state = Arc::new(Mutex::new(ProbeState::default()));
        let task = tokio::spawn(probe(client, state.clone()));
        let probe = Probe { state, task };
        let deadline = Instant::now() + ELECTION_LIMIT;
        while probe.lock().accepted == 0 {
            if Instant::now() > deadline {
                bail!(
                    "the probe's registrations were all refused for {ELECTION_LIMIT:?} before \
                     any fault (last error: {})",
                    probe.lock().last_error.as_deref().unwrap_or("none")
                );
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        Ok(probe)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the fault as injected now; call right before the signal.
    pub(crate) fn fault(&self) {
        self.mark().now();
    }

    pub(crate) fn mark(&self) -> FaultMark {
        FaultMark(self.state.clone())
    }

    /// Waits up to `limit` for a registration sent after the fault to be accepted, and returns
    /// how long after the fault it was.
    pub(crate) async fn failover(&self, limit: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + limit;
        loop {
            {
                let state = self.lock();
                if let Some(gap) = state.failover {
                    return Ok(gap);
                }
                if state.fault.is_none() {
                    return Err("no fault was injected".into());
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "no registration sent after the fault was accepted within {limit:?} \
                         ({} refused; last error: {})",
                        state.refused,
                        state.last_error.as_deref().unwrap_or("none")
                    ));
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Dropping the task drops its JoinSet, which aborts the registrations in flight.
        self.task.abort();
    }
}

async fn probe(client: SluiceClient, state: Arc<Mutex<ProbeState>>) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut inflight = tokio::task::JoinSet::new();
    for n in 0u32.. {
        tick.tick().await;
        while inflight.try_join_next().is_some() {}
        if lock().failover.is_some() {
            break;
        }
        if inflight.len() >= PROBE_INFLIGHT {
            continue;
        }
        let client = client.clone();
        let state = state.clone();
        inflight.spawn(async move {
            let sent = Instant::now();
            let key = ShuffleKey::new(PROBE_APP, n);
            let answer = tokio::time::timeout(PROBE_TIMEOUT, client.register_shuffle(&key, 1, 1))
                .await
                .map_err(|_| format!("no answer in {PROBE_TIMEOUT:?}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            let done = Instant::now();
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            match answer {
                Ok(_) => {
                    state.accepted += 1;
                    if let Some(fault) = state.fault.filter(|f| sent >= *f) {
                        let gap = done - fault;
                        state.failover = Some(state.failover.map_or(gap, |g| g.min(gap)));
                    }
                }
                Err(e) => {
                    state.refused += 1;
                    state.last_error = Some(e);
                }
            }
        });
    }
    // Let the registrations in flight finish (one may still beat the one measured).
    while inflight.join_next().await.is_some() {}
}

/// Starts three masters and four workers, registers the workload's shuffle, and starts the
/// probe.
async fn start_group(ctx: &Ctx) -> anyhow::Result<(Setup, Probe)> {
    let setup =
        Setup::start_masters(ctx, MASTERS, &four_workers(), ctx.sizes.workload(), |_| {}).await?;
    ctx.phase.set("starting the probe");
    let probe = Probe::start(&ctx.run, &setup.cluster.master_addr).await?;
    Ok((setup, probe))
}

/// Records the failover in `observed` (a failure when none came), with the new leader.
async fn record_failover(cluster: &Cluster, probe: &Probe, observed: &mut Observed, what: &str) {
    match probe.failover(ELECTION_LIMIT).await {
        Ok(gap) => {
            observed.failover = Some(gap);
            let leader = if cluster.masters.len() == 1 {
                String::new()
            } else {
                match cluster.leader(ELECTION_LIMIT).await {
                    Ok(l) => format!(", now led by m{} (term {})", l.index, l.term),
                    Err(e) => format!(", then no leader: {e:#}"),
                }
            };
            observed.injected.push(format!(
                "failover {} ms: from the {what} to the first write a master accepted{leader}",
                gap.as_millis()
            ));
        }
        Err(e) => observed.failures.push(format!("after the {what}: {e}")),
    }
}

/// Waits until master `i` follows `leader` and applied at least what the leader had applied
/// when asked; a failure in `observed` otherwise.
async fn rejoined(cluster: &Cluster, i: usize, observed: &mut Observed) {
    let wait = async {
        let leader = cluster.leader(ELECTION_LIMIT).await?;
        let target = cluster
            .run
            .master_status(&leader.addr, Duration::from_secs(2))
            .await?
            .last_applied;
        let addr = cluster.masters[i].addr.to_string();
        let deadline = Instant::now() + ELECTION_LIMIT;
        loop {
            let status = cluster
                .run
                .master_status(&addr, Duration::from_secs(1))
                .await;
            if let Ok(status) = &status {
                let follows = status.leader.as_ref().map(|l| l.id) == Some(leader.index as u64);
                if follows && status.last_applied >= target {
                    return anyhow::Ok((leader, status.last_applied));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "m{i} did not catch up with m{} (applied {target}) within {ELECTION_LIMIT:?}: \
                     {status:?}",
                    leader.index
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match wait.await {
        Ok((leader, applied)) => observed.injected.push(format!(
            "m{i} rejoined: follows m{} in term {}, applied {applied}",
            leader.index, leader.term
        )),
        Err(e) => observed.failures.push(format!("{e:#}")),
    }
}

/// The leader SIGKILLed half-way through the writes; once another master accepts writes, the
/// killed one is started again on its address and data directory and must catch up.
pub(crate) async fn kill_leader_push(ctx: &Ctx) -> anyhow::Result<Observed> {
    let (mut setup, probe) = start_group(ctx).await?;
    let mut observed = setup.observed();
    let at = [ctx.sizes.mid_write()];
    let mark = probe.mark();
    write_with_faults(&mut setup, &mut observed, &at, async move |s, _| {
        let leader = s.cluster.leader(ELECTION_LIMIT).await?;
        mark.now();
        s.cluster.kill_master(leader.index).await;
        Ok(format!(
            "SIGKILL the leader m{} (term {})",
            leader.index, leader.term
        ))
    })
    .await?;
    record_failover(&setup.cluster, &probe, &mut observed, "SIGKILL").await;
    let killed = setup.cluster.masters.iter().position(|m| m.pid().is_none());
    if let Some(i) = killed {
        setup.phase.set("restarting the killed master");
        setup.cluster.start_master(i).await?;
        rejoined(&setup.cluster, i, &mut observed).await;
    }
    setup.read_if_written(&mut observed).await;
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// The leader SIGKILLed a third of the way through the reads.
pub(crate) async fn kill_leader_read(ctx: &Ctx) -> anyhow::Result<Observed> {
    let (mut setup, probe) = start_group(ctx).await?;
    let mut observed = setup.observed();
    setup.write_all(&mut observed).await;
    if observed.write_error.is_some() {
        setup.cluster.shutdown().await;
        return Ok(observed);
    }
    ctx.phase.set("reading");
    let mut reads = Reads::open(&setup.client, &setup.key, &setup.workload).await?;
    let raw = setup.workload.records() * setup.workload.record_len as u64;
    let at = (raw / crate::setup::BATCH_SIZE as u64 / 3).max(1);
    let result = match reads.blocks(at).await {
        Ok(true) => {
            let leader = setup.cluster.leader(ELECTION_LIMIT).await?;
            probe.fault();
            setup.cluster.kill_master(leader.index).await;
            observed.injected.push(format!(
                "SIGKILL the leader m{} (term {}) after {at} blocks read",
                leader.index, leader.term
            ));
            ctx.phase.set("reading after the kill");
            reads.to_end().await
        }
        Ok(false) => {
            observed.not_injected = Some(format!("the reader ended before {at} blocks"));
            Ok(())
        }
        Err(e) => Err(e),
    };
    observed.tally = reads.tally;
    observed.read_error = result.err();
    if observed.not_injected.is_none() {
        record_failover(&setup.cluster, &probe, &mut observed, "SIGKILL").await;
    }
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// The leader SIGKILLed as soon as the last map's end is acknowledged: the leader has just
/// started the commit (it answers the last map end, then has the workers commit), so another
/// master must finish it.
pub(crate) async fn kill_leader_commit(ctx: &Ctx) -> anyhow::Result<Observed> {
    let (mut setup, probe) = start_group(ctx).await?;
    let mut observed = setup.observed();
    setup.write_all(&mut observed).await;
    if observed.write_error.is_none() {
        let leader = setup.cluster.leader(ELECTION_LIMIT).await?;
        probe.fault();
        setup.cluster.kill_master(leader.index).await;
        observed.injected.push(format!(
            "SIGKILL the leader m{} (term {}) as the last map's end was acknowledged, the commit \
             under way",
            leader.index, leader.term
        ));
        record_failover(&setup.cluster, &probe, &mut observed, "SIGKILL").await;
        observed
            .injected
            .push(commit_seen(&setup.cluster, leader.index, &setup.key));
        setup.read_all(&mut observed).await;
    }
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// Whether the killed leader `killed` had finished the commit of `key`, from the masters' logs:
/// for the record, since the kill races the commit it started.
fn commit_seen(cluster: &Cluster, killed: usize, key: &ShuffleKey) -> String {
    let committed = format!("shuffle committed shuffle={key} ");
    // Logs written to a file carry no colour codes.
    let log = |i: usize| {
        std::fs::read_to_string(cluster.dir.join(format!("m{i}.log"))).unwrap_or_default()
    };
    if log(killed).contains(&committed) {
        return format!("m{killed} had finished the commit before the SIGKILL");
    }
    match (0..cluster.masters.len())
        .filter(|i| *i != killed)
        .find(|i| log(*i).contains("resuming the commit"))
    {
        Some(i) => format!("m{killed} was killed mid-commit; m{i} resumed the commit"),
        None => format!("m{killed} was killed before its commit finished"),
    }
}

/// The leader SIGSTOPped half-way through the writes, which go on; once the other two agree on
/// a new leader that accepted a write (and at least three election timeouts have passed), the
/// old one is SIGCONTed and at once sent a `RegisterShuffle` directly, on a connection opened
/// before the stop: it must answer UNAVAILABLE (it is no longer the leader), never accept.
pub(crate) async fn stop_leader(ctx: &Ctx) -> anyhow::Result<Observed> {
    let (mut setup, probe) = start_group(ctx).await?;
    let mut observed = setup.observed();
    let old = setup.cluster.leader(ELECTION_LIMIT).await?;
    let mut deposed = MasterClient::new(
        ctx.run
            .master_channel(&old.addr, Duration::from_secs(5))
            .await?,
    );
    let mid = ctx.sizes.mid_write();
    let mut writes = setup.writes();
    let mut result = writes.until(mid).await;
    if result.is_ok() {
        probe.fault();
        let stopped = Instant::now();
        if !setup.cluster.stop_master(old.index) {
            return Err(anyhow!("SIGSTOP m{} failed", old.index));
        }
        observed.injected.push(format!(
            "SIGSTOP the leader m{} (term {}) after map {} record {}",
            old.index, old.term, mid.map, mid.seq
        ));
        ctx.phase.set("writing while the leader is stopped");
        let cluster = &mut setup.cluster;
        let (written, checked) = tokio::join!(writes.all(), async {
            let new = cluster
                .leader_where(ELECTION_LIMIT, |l| {
                    l.index != old.index && l.term > old.term
                })
                .await;
            let elected = stopped.elapsed();
            let failover = probe.failover(ELECTION_LIMIT).await;
            let held = ELECTION_TIMEOUT * 3;
            tokio::time::sleep(held.saturating_sub(stopped.elapsed())).await;
            let stopped_for = stopped.elapsed();
            cluster.resume_master(old.index);
            let answer = write_to(&ctx.run, &mut deposed).await;
            (new.map(|n| (n, elected)), failover, stopped_for, answer)
        });
        result = written;
        let (new, failover, stopped_for, answer) = checked;
        match new {
            Ok((new, elected)) => observed.injected.push(format!(
                "m{} elected in term {}, seen by the other masters {} ms after the SIGSTOP; \
                 SIGCONT after {} ms",
                new.index,
                new.term,
                elected.as_millis(),
                stopped_for.as_millis()
            )),
            Err(e) => observed.failures.push(format!(
                "no new leader while m{} was stopped: {e:#}",
                old.index
            )),
        }
        match failover {
            Ok(gap) => {
                observed.failover = Some(gap);
                observed.injected.push(format!(
                    "failover {} ms: from the SIGSTOP to the first write a master accepted",
                    gap.as_millis()
                ));
            }
            Err(e) => observed.failures.push(format!("after the SIGSTOP: {e}")),
        }
        match judge_deposed(&old, answer) {
            Ok(what) => observed.injected.push(what),
            Err(what) => observed.failures.push(what),
        }
    }
    observed.written = writes.written();
    observed.maps_done = writes.finished_maps;
    observed.write_error = result.err();
    rejoined(&setup.cluster, old.index, &mut observed).await;
    setup.read_if_written(&mut observed).await;
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// A write sent to one master only (no following of the leader): a probe shuffle's
/// registration, signed as the operator in a secure run (signed now, after the SIGCONT, so its
/// time is fresh and only the master's leadership decides the answer).
async fn write_to(
    run: &Run,
    master: &mut MasterClient<tonic::transport::Channel>,
) -> Result<Result<pb::RegisterShuffleResponse, tonic::Status>, tokio::time::error::Elapsed> {
    let message = pb::RegisterShuffleRequest {
        shuffle: Some(ShuffleKey::new("chaos-deposed", 0).to_pb()),
        num_maps: 1,
        num_partitions: 1,
        replication: 1,
    };
    let request = match run.sign(&Principal::Admin, message) {
        Ok(request) => request,
        Err(e) => return Ok(Err(tonic::Status::internal(format!("signing: {e:#}")))),
    };
    tokio::time::timeout(Duration::from_secs(5), master.register_shuffle(request))
        .await
        .map(|r| r.map(tonic::Response::into_inner))
}

/// What the deposed leader answered a write: UNAVAILABLE passes, anything else fails.
fn judge_deposed(
    old: &Leader,
    answer: Result<Result<pb::RegisterShuffleResponse, tonic::Status>, tokio::time::error::Elapsed>,
) -> Result<String, String> {
    let m = old.index;
    match answer {
        Ok(Ok(_)) => Err(format!(
            "the deposed leader m{m} accepted a RegisterShuffle after its SIGCONT"
        )),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
            let redirect = status
                .metadata()
                .get("sluice-leader")
                .and_then(|v| v.to_str().ok())
                .map_or("no sluice-leader".to_string(), |l| {
                    format!("sluice-leader: {l}")
                });
            Ok(format!(
                "the deposed leader m{m}, sent a RegisterShuffle at once after its SIGCONT, \
                 refused it: UNAVAILABLE ({redirect}; {:?})",
                status.message()
            ))
        }
        Ok(Err(status)) => Err(format!(
            "the deposed leader m{m} answered a RegisterShuffle after its SIGCONT with {:?} \
             ({:?}), not UNAVAILABLE",
            status.code(),
            status.message()
        )),
        Err(_) => Err(format!(
            "the deposed leader m{m} did not answer a RegisterShuffle within 5s of its SIGCONT"
        )),
    }
}

/// A cluster of one master that keeps its state in its data directory: a small shuffle is
/// written and committed, then the master is SIGKILLed and started again on the same address
/// and data directory, half-way through the workload's writes or (`at_commit`) as soon as the
/// last map's end is acknowledged, so the restarted master finds the commit pending. Both
/// shuffles must read back whole.
pub(crate) async fn single_master_restart(ctx: &Ctx, at_commit: bool) -> anyhow::Result<Observed> {
    let mut setup = Setup::start(ctx, &four_workers(), ctx.sizes.workload()).await?;
    let mut observed = setup.observed();
    ctx.phase
        .set("writing the shuffle committed before the restart");
    let early_key = ShuffleKey::new("chaos", 1);
    let early = Workload {
        maps: 2,
        partitions: 4,
        records_per_map: 500,
        record_len: 200,
        shape: Shape::Even,
    };
    let handle = setup
        .client
        .register_shuffle(&early_key, early.maps, early.partitions)
        .await?;
    let mut writes = Writes::new(setup.client.clone(), handle, early.clone());
    writes.all().await?;
    Reads::open(&setup.client, &early_key, &early).await?;
    ctx.phase.set("starting the probe");
    let probe = Probe::start(&ctx.run, &setup.cluster.master_addr).await?;
    // The end of the workload is reached once the last map's end is acknowledged.
    let at = [if at_commit {
        setup.workload.at(1.0)
    } else {
        ctx.sizes.mid_write()
    }];
    let mark = probe.mark();
    write_with_faults(&mut setup, &mut observed, &at, async move |s, _| {
        mark.now();
        s.cluster.restart_master(0).await?;
        Ok(format!(
            "{}SIGKILL the master and start it again on {} and its data directory",
            if at_commit {
                "the last map's end acknowledged, the commit under way: "
            } else {
                ""
            },
            s.cluster.masters[0].addr
        ))
    })
    .await?;
    record_failover(&setup.cluster, &probe, &mut observed, "SIGKILL").await;
    setup.read_if_written(&mut observed).await;
    ctx.phase
        .set("reading the shuffle committed before the restart");
    match read_whole(&setup.client, &early_key, &early).await {
        Ok(()) => observed.injected.push(format!(
            "shuffle {early_key} (committed before the restart): {} records read back exactly \
             once",
            early.records()
        )),
        Err(e) => observed.failures.push(format!(
            "shuffle {early_key}, committed before the restart: {e}"
        )),
    }
    setup.cluster.shutdown().await;
    Ok(observed)
}

/// Reads every partition of `key` and checks that each record of `workload` came back exactly
/// once and intact.
async fn read_whole(
    client: &SluiceClient,
    key: &ShuffleKey,
    workload: &Workload,
) -> Result<(), String> {
    let mut reads = Reads::open(client, key, workload)
        .await
        .map_err(|e| e.to_string())?;
    reads.to_end().await.map_err(|e| e.to_string())?;
    let tally = &reads.tally;
    let lost = tally.lost(workload.maps, workload.records_per_map);
    let (duplicated, corrupted) = (tally.duplicated(), tally.corrupted);
    if lost + duplicated + corrupted > 0 {
        return Err(format!(
            "{lost} records lost, {duplicated} repeated, {corrupted} changed"
        ));
    }
    Ok(())
}
