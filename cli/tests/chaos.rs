//! The quick chaos subset on real `sluice` processes: a worker SIGKILLed while maps push (with
//! replication 2 and 1), one SIGKILLed while reducers read, and a flipped byte in a committed
//! file; every worker restarted in turn while maps push, and a memory bound; the leader of three
//! masters SIGKILLed while maps push; a slow disk, a slow replica link, a stalling link and
//! resets mid-frame; workers drained on SIGTERM while maps push and while reducers read, and one
//! whose grace period is too short; and a worker and a leader SIGKILLed again with a cluster
//! secret and TLS on every port (`--secure`).
//! The full set: `cargo run -p chaos -- --all` (and `--all --secure`).

use std::path::PathBuf;

use chaos::{Options, Scenario};

/// Runs `runs` in quick sizes and fails with the report's table unless every one passed.
async fn quick(runs: Vec<(Scenario, u32)>) {
    run_quick(runs, false).await;
}

/// Like [`quick`], with `secure` set: a cluster secret and TLS everywhere.
async fn run_quick(runs: Vec<(Scenario, u32)>, secure: bool) {
    let run_dir = tempfile::tempdir().unwrap();
    let options = Options {
        quick: true,
        secure,
        ..Options::new(
            PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
            run_dir.path().to_path_buf(),
            runs.clone(),
        )
    };
    let report = chaos::run(&options).await.unwrap();
    assert_eq!(report.scenarios.len(), runs.len());
    assert!(
        report.ok(),
        "chaos scenarios failed (logs kept in {}):\n{}",
        run_dir.keep().display(),
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_chaos_scenarios_pass() {
    quick(vec![
        (Scenario::KillWhilePushing, 2),
        (Scenario::KillWhilePushing, 1),
        (Scenario::KillWhileReading, 2),
        (Scenario::Corrupt, 2),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_and_memory_bound_pass() {
    quick(vec![
        (Scenario::RollingRestart, 2),
        (Scenario::MemZeroSlices, 1),
    ])
    .await;
}

/// Sick rather than dead: a slow disk (the master must call it slow and place the next shuffle
/// elsewhere), a slow replica link, a stalling link and resets mid-frame, each run clean and
/// then sick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_scenarios_pass() {
    quick(vec![
        (Scenario::SlowDisk, 2),
        (Scenario::SlowWorkerLink, 2),
        (Scenario::StallingLink, 2),
        (Scenario::ResetLink, 1),
    ])
    .await;
}

/// Workers told to go (SIGTERM with a grace period): one while maps push and two one after the
/// other while the reducer reads, at replication 1, must lose nothing; a grace period too short
/// for the data must report the loss; a drain with a cluster secret and TLS hands over too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_scenarios_pass() {
    quick(vec![
        (Scenario::SigtermDrain, 1),
        (Scenario::DrainWhileReading, 1),
        (Scenario::PreemptShort, 1),
    ])
    .await;
    run_quick(vec![(Scenario::SigtermDrain, 1)], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_leader_kill_passes() {
    quick(vec![(Scenario::HaKillLeaderPush, 2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_chaos_scenarios_pass_with_auth_and_tls() {
    run_quick(
        vec![
            (Scenario::KillWhilePushing, 2),
            (Scenario::KillWhileReading, 2),
            (Scenario::HaKillLeaderPush, 2),
        ],
        true,
    )
    .await;
}
