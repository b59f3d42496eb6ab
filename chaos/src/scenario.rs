//! The scenarios and their judge. Each scenario is one function over the steps of
//! [`crate::setup`] (start, write, fault, read): the fault scenarios are in [`crate::faults`],
//! the memory bounds in [`crate::memory`]. [`run`] bounds a scenario by its deadline and
//! [`judge`] turns what it observed into an [`Outcome`].

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{Run, Skipped};
use crate::degraded::{self, DegradedFigures, Sickness};
use crate::drain;
use crate::faults;
use crate::ha;
use crate::memory::{self, MemoryFigures};
use crate::records::Id;
use crate::setup::{Ctx, Observed, Phase};
use crate::workload::{Shape, Workload};

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    KillWhilePushing,
    KillWhileReading,
    StopWhilePushing,
    Restart,
    RollingRestart,
    Partition,
    Corrupt,
    DiskFull,
    MemWriters,
    MemStalledReplica,
    MemSkewedMerged,
    MemIdleConnections,
    MemZeroSlices,
    HaKillLeaderPush,
    HaKillLeaderRead,
    HaKillLeaderCommit,
    HaStopLeader,
    SingleMasterRestart,
    SingleMasterRestartCommit,
    SlowNetwork,
    SlowWorkerLink,
    ThinLink,
    StallingLink,
    ResetLink,
    SlowDisk,
    SlowMaster,
    SigtermDrain,
    DrainWhileReading,
    PreemptShort,
    DrainRate,
    DrainRateS3,
}

impl Scenario {
    pub const ALL: [Scenario; 31] = [
        Scenario::KillWhilePushing,
        Scenario::KillWhileReading,
        Scenario::StopWhilePushing,
        Scenario::Restart,
        Scenario::RollingRestart,
        Scenario::Partition,
        Scenario::Corrupt,
        Scenario::DiskFull,
        Scenario::MemWriters,
        Scenario::MemStalledReplica,
        Scenario::MemSkewedMerged,
        Scenario::MemIdleConnections,
        Scenario::MemZeroSlices,
        Scenario::HaKillLeaderPush,
        Scenario::HaKillLeaderRead,
        Scenario::HaKillLeaderCommit,
        Scenario::HaStopLeader,
        Scenario::SingleMasterRestart,
        Scenario::SingleMasterRestartCommit,
        Scenario::SlowNetwork,
        Scenario::SlowWorkerLink,
        Scenario::ThinLink,
        Scenario::StallingLink,
        Scenario::ResetLink,
        Scenario::SlowDisk,
        Scenario::SlowMaster,
        Scenario::SigtermDrain,
        Scenario::DrainWhileReading,
        Scenario::PreemptShort,
        Scenario::DrainRate,
        Scenario::DrainRateS3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillWhilePushing => "kill-while-pushing",
            Scenario::KillWhileReading => "kill-while-reading",
            Scenario::StopWhilePushing => "stop-while-pushing",
            Scenario::Restart => "restart",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::Partition => "partition",
            Scenario::Corrupt => "corrupt",
            Scenario::DiskFull => "disk-full",
            Scenario::MemWriters => "mem-writers",
            Scenario::MemStalledReplica => "mem-stalled-replica",
            Scenario::MemSkewedMerged => "mem-skewed-merged",
            Scenario::MemIdleConnections => "mem-idle-connections",
            Scenario::MemZeroSlices => "mem-zero-slices",
            Scenario::HaKillLeaderPush => "ha-kill-leader-push",
            Scenario::HaKillLeaderRead => "ha-kill-leader-read",
            Scenario::HaKillLeaderCommit => "ha-kill-leader-commit",
            Scenario::HaStopLeader => "ha-stop-leader",
            Scenario::SingleMasterRestart => "single-master-restart",
            Scenario::SingleMasterRestartCommit => "single-master-restart-commit",
            Scenario::SlowNetwork => "slow-network",
            Scenario::SlowWorkerLink => "slow-worker-link",
            Scenario::ThinLink => "thin-link",
            Scenario::StallingLink => "stalling-link",
            Scenario::ResetLink => "reset-link",
            Scenario::SlowDisk => "slow-disk",
            Scenario::SlowMaster => "slow-master",
            Scenario::SigtermDrain => "sigterm-drain",
            Scenario::DrainWhileReading => "drain-while-reading",
            Scenario::PreemptShort => "preempt-short",
            Scenario::DrainRate => "drain-rate",
            Scenario::DrainRateS3 => "drain-rate-s3",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The replications the scenario runs with: 2 for the faults (and 1 too for a kill while
    /// pushing, and for every degraded scenario: a slow worker must not lose data either); the
    /// memory scenarios load one worker with replication 1, except the stalled replica, which
    /// needs a replica.
    pub fn replications(self) -> &'static [u32] {
        if self.sickness().is_some() {
            return &[2, 1];
        }
        match self {
            Scenario::KillWhilePushing | Scenario::SigtermDrain | Scenario::DrainWhileReading => {
                &[2, 1]
            }
            Scenario::PreemptShort | Scenario::DrainRate | Scenario::DrainRateS3 => &[1],
            Scenario::MemWriters
            | Scenario::MemSkewedMerged
            | Scenario::MemIdleConnections
            | Scenario::MemZeroSlices => &[1],
            _ => &[2],
        }
    }

    /// What a degraded scenario makes sick.
    fn sickness(self) -> Option<Sickness> {
        Some(match self {
            Scenario::SlowNetwork => Sickness::SlowNetwork,
            Scenario::SlowWorkerLink => Sickness::SlowWorkerLink,
            Scenario::ThinLink => Sickness::ThinLink,
            Scenario::StallingLink => Sickness::StallingLink,
            Scenario::ResetLink => Sickness::ResetLink,
            Scenario::SlowDisk => Sickness::SlowDisk,
            Scenario::SlowMaster => Sickness::SlowMaster,
            _ => return None,
        })
    }

    /// How long a run may take: the memory scenarios move up to 1.5 GiB through one worker,
    /// and the degraded ones run their workload twice, so they get twice the faults' deadline.
    pub fn deadline(self, sizes: Sizes) -> Duration {
        let drains = matches!(
            self,
            Scenario::SigtermDrain
                | Scenario::DrainWhileReading
                | Scenario::PreemptShort
                | Scenario::DrainRate
                | Scenario::DrainRateS3
        );
        if self.name().starts_with("mem-") || self.sickness().is_some() || drains {
            sizes.deadline * 2
        } else {
            sizes.deadline
        }
    }

    /// The scenario's function.
    async fn body(self, ctx: &Ctx) -> anyhow::Result<Observed> {
        match self {
            Scenario::KillWhilePushing => faults::kill_while_pushing(ctx).await,
            Scenario::KillWhileReading => faults::kill_while_reading(ctx).await,
            Scenario::StopWhilePushing => faults::stop_while_pushing(ctx).await,
            Scenario::Restart => faults::restart(ctx).await,
            Scenario::RollingRestart => faults::rolling_restart(ctx).await,
            Scenario::Partition => faults::partition(ctx).await,
            Scenario::Corrupt => faults::corrupt(ctx).await,
            Scenario::DiskFull => faults::disk_full(ctx).await,
            Scenario::MemWriters => memory::writers(ctx).await,
            Scenario::MemStalledReplica => memory::stalled_replica(ctx).await,
            Scenario::MemSkewedMerged => memory::skewed_merged(ctx).await,
            Scenario::MemIdleConnections => memory::idle_connections(ctx).await,
            Scenario::MemZeroSlices => memory::zero_slices(ctx).await,
            Scenario::HaKillLeaderPush => ha::kill_leader_push(ctx).await,
            Scenario::HaKillLeaderRead => ha::kill_leader_read(ctx).await,
            Scenario::HaKillLeaderCommit => ha::kill_leader_commit(ctx).await,
            Scenario::HaStopLeader => ha::stop_leader(ctx).await,
            Scenario::SingleMasterRestart => ha::single_master_restart(ctx, false).await,
            Scenario::SingleMasterRestartCommit => ha::single_master_restart(ctx, true).await,
            Scenario::SigtermDrain => drain::sigterm_drain(ctx).await,
            Scenario::DrainWhileReading => drain::drain_while_reading(ctx).await,
            Scenario::PreemptShort => drain::preempt_short(ctx).await,
            Scenario::DrainRate => drain::drain_rate(ctx).await,
            Scenario::DrainRateS3 => drain::drain_rate_s3(ctx).await,
            _ => match self.sickness() {
                Some(sickness) => degraded::run(ctx, sickness).await,
                None => anyhow::bail!("scenario {} has no body", self.name()),
            },
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Every record read exactly once, intact.
    #[serde(rename = "pass")]
    Pass,
    /// Replication 1: the reader reported the loss as a data-loss error. Counts as a pass.
    #[serde(rename = "loss reported")]
    LossReported,
    #[serde(rename = "FAIL")]
    Fail,
    /// Could not run here; neither passed nor failed.
    #[serde(rename = "skipped")]
    Skipped,
}

impl Verdict {
    pub fn passed(self) -> bool {
        matches!(self, Verdict::Pass | Verdict::LossReported)
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::LossReported => "loss reported",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub replication: u32,
    pub written: u64,
    pub read: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub verdict: Verdict,
    /// What was injected and, on failure or skip, why.
    pub detail: String,
    pub seconds: f64,
    /// The memory scenarios: the worker process's memory against its budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryFigures>,
    /// The master scenarios: milliseconds from the fault to the first write a master accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_ms: Option<u64>,
    /// The degraded scenarios: the sick run against a clean run of the same workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<DegradedFigures>,
}

impl Outcome {
    fn new(scenario: Scenario, replication: u32) -> Outcome {
        Outcome {
            scenario: scenario.name(),
            replication,
            written: 0,
            read: 0,
            lost: 0,
            duplicated: 0,
            corrupted: 0,
            verdict: Verdict::Fail,
            detail: String::new(),
            seconds: 0.0,
            memory: None,
            failover_ms: None,
            degraded: None,
        }
    }
}

/// Sizes of the workload and limits of a run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub quick: bool,
    pub maps: u32,
    pub partitions: u32,
    pub records_per_map: u32,
    pub record_len: usize,
    /// How long one scenario may take before it is failed.
    pub deadline: Duration,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                quick,
                maps: 4,
                partitions: 8,
                records_per_map: 1500,
                record_len: 700,
                deadline: Duration::from_secs(60),
            }
        } else {
            Sizes {
                quick,
                maps: 8,
                partitions: 16,
                records_per_map: 4000,
                record_len: 1000,
                deadline: Duration::from_secs(180),
            }
        }
    }

    pub(crate) fn workload(&self) -> Workload {
        Workload {
            maps: self.maps,
            partitions: self.partitions,
            records_per_map: self.records_per_map,
            record_len: self.record_len,
            shape: Shape::Even,
        }
    }

    /// Half-way through the middle map.
    pub(crate) fn mid_write(&self) -> Id {
        Id {
            map: self.maps / 2,
            seq: self.records_per_map / 2,
        }
    }
}

/// Runs one scenario with one replication and judges it. Never panics through; every process
/// it started is gone when it returns.
pub async fn run(run: &Run, scenario: Scenario, replication: u32, sizes: Sizes) -> Outcome {
    let started = Instant::now();
    let name = format!("{}-r{replication}", scenario.name());
    tracing::info!(scenario = %name, "starting");
    let phase = Phase::default();
    let ctx = Ctx {
        run: run.clone(),
        name: name.clone(),
        replication,
        sizes,
        phase: phase.clone(),
    };
    let deadline = scenario.deadline(sizes);
    let body =
        tokio::spawn(async move { tokio::time::timeout(deadline, scenario.body(&ctx)).await });
    let mut outcome = Outcome::new(scenario, replication);
    match body.await {
        Ok(Ok(Ok(observed))) => judge(&mut outcome, observed),
        Ok(Ok(Err(e))) => match e.downcast_ref::<Skipped>() {
            Some(Skipped(reason)) => {
                outcome.verdict = Verdict::Skipped;
                outcome.detail = reason.clone();
            }
            None => outcome.detail = format!("harness error: {e:#}"),
        },
        Ok(Err(_)) => {
            outcome.detail = format!(
                "did not finish within {deadline:?}; hung while {}",
                phase.get()
            )
        }
        Err(e) => outcome.detail = format!("panicked: {e}"),
    }
    outcome.seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    tracing::info!(scenario = %name, verdict = outcome.verdict.label(), detail = %outcome.detail, "done");
    outcome
}

/// Exactly once and intact passes; with replication 1 a data-loss error from the reader passes
/// too; short, repeated or changed data without an error fails, and so does a fault that never
/// happened or any failure besides the data.
fn judge(outcome: &mut Outcome, observed: Observed) {
    let tally = &observed.tally;
    outcome.written = observed.written;
    outcome.read = tally.records;
    outcome.duplicated = tally.duplicated();
    outcome.corrupted = tally.corrupted;
    outcome.memory = observed.memory.clone();
    outcome.degraded = observed.degraded.clone();
    outcome.failover_ms = observed
        .failover
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut detail = observed.injected.join("; ");
    let mut note = |text: String| {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&text);
    };
    for extra in &tally.notes {
        note(extra.clone());
    }
    if let Some(why) = &observed.not_injected {
        note(format!("fault not injected: {why}"));
    }
    for failure in &observed.failures {
        note(format!("FAILED: {failure}"));
    }
    if let Some(e) = &observed.write_error {
        note(format!("write failed: {e}"));
        outcome.verdict = Verdict::Fail;
        outcome.lost = outcome.written.saturating_sub(tally.counts.len() as u64);
        outcome.detail = detail;
        return;
    }
    match &observed.read_error {
        None => {
            outcome.lost = tally.lost(observed.maps_done, observed.records_per_map);
            let clean = outcome.lost == 0 && outcome.duplicated == 0 && outcome.corrupted == 0;
            outcome.verdict = if clean && observed.not_injected.is_none() {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            if !clean {
                note("records lost, repeated or changed without an error".into());
            }
        }
        Some(e) => {
            // The reader stopped: what it did not return is not "lost" silently.
            outcome.lost = outcome.written.saturating_sub(tally.counts.len() as u64);
            let wrong = outcome.duplicated > 0 || outcome.corrupted > 0;
            outcome.verdict = if outcome.replication == 1 && e.is_data_loss() && !wrong {
                Verdict::LossReported
            } else {
                Verdict::Fail
            };
            note(format!("reader error: {e}"));
        }
    }
    if !observed.failures.is_empty() {
        outcome.verdict = Verdict::Fail;
    }
    outcome.detail = detail;
}

#[cfg(test)]
mod tests {
    use sluice_client::ClientError;

    use super::*;
    use crate::records::Id;

    fn outcome(replication: u32) -> Outcome {
        Outcome::new(Scenario::Corrupt, replication)
    }

    /// Two maps of three records; `read` lists the (map, seq) ids returned.
    fn observed(read: &[(u32, u32)], error: Option<ClientError>) -> Observed {
        let mut tally = crate::workload::Tally::default();
        for (map, seq) in read {
            *tally
                .counts
                .entry(Id {
                    map: *map,
                    seq: *seq,
                })
                .or_insert(0) += 1;
            tally.records += 1;
        }
        Observed {
            written: 6,
            maps_done: 2,
            records_per_map: 3,
            tally,
            read_error: error,
            ..Observed::default()
        }
    }

    fn lost_error() -> ClientError {
        ClientError::DataLost {
            shuffle: "s".into(),
            partition: 0,
            reason: "gone".into(),
        }
    }

    const ALL: [(u32, u32); 6] = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)];

    #[test]
    fn exactly_once_passes_and_short_or_repeated_data_fails() {
        let mut o = outcome(2);
        judge(&mut o, observed(&ALL, None));
        assert_eq!((o.verdict, o.lost, o.read), (Verdict::Pass, 0, 6));

        let mut o = outcome(2);
        judge(&mut o, observed(&ALL[1..], None));
        assert_eq!((o.verdict, o.lost), (Verdict::Fail, 1));

        let mut o = outcome(1);
        judge(&mut o, observed(&[ALL, [(1, 2); 6]].concat(), None));
        assert_eq!((o.verdict, o.duplicated), (Verdict::Fail, 1));
    }

    #[test]
    fn only_replication_one_may_pass_with_a_data_loss_error() {
        let mut o = outcome(1);
        judge(&mut o, observed(&ALL[..2], Some(lost_error())));
        assert_eq!((o.verdict, o.lost), (Verdict::LossReported, 4));

        let mut o = outcome(2);
        judge(&mut o, observed(&ALL[..2], Some(lost_error())));
        assert_eq!(o.verdict, Verdict::Fail);

        let mut o = outcome(1);
        let timeout = ClientError::Timeout("layout".into());
        judge(&mut o, observed(&ALL[..2], Some(timeout)));
        assert_eq!(o.verdict, Verdict::Fail);
    }

    #[test]
    fn a_fault_that_never_happened_fails() {
        let mut o = outcome(2);
        let mut seen = observed(&ALL, None);
        seen.not_injected = Some("the reader ended first".into());
        judge(&mut o, seen);
        assert_eq!(o.verdict, Verdict::Fail);
        assert!(o.detail.contains("not injected"), "{}", o.detail);
    }

    #[test]
    fn a_failure_besides_the_data_fails_exactly_once_data() {
        let mut o = outcome(1);
        let mut seen = observed(&ALL, None);
        seen.failures.push("peak RSS over the bound".into());
        judge(&mut o, seen);
        assert_eq!((o.verdict, o.lost), (Verdict::Fail, 0));
        assert!(o.detail.contains("peak RSS"), "{}", o.detail);
    }

    #[test]
    fn every_scenario_has_a_unique_name_and_a_replication() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(s));
            assert!(!s.replications().is_empty());
        }
    }
}
