//! Draining a worker on a real in-process cluster: told to go with a deadline, it hands over
//! every copy no other copy outlives, the layouts follow, and it stops. At replication 1 every
//! record is then read exactly once from the workers that stay; a deadline too short for the
//! data loses copies, and readers are told so (`DataLost`), never given short data.

mod common;

use std::time::{Duration, Instant};

use common::{api_ok, read_records, write_records};
use sluice::local::{LocalCluster, LocalOptions};
use sluice::records::RecordId;
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::ShuffleKey;

const PATIENCE: Duration = Duration::from_secs(30);

/// How many committed copies of `key` the layout puts on `worker` (waits for the commit).
async fn copies_on(
    cluster: &LocalCluster,
    key: &ShuffleKey,
    partitions: u32,
    worker: &str,
) -> usize {
    let mut master = MasterClient::connect(format!("http://{}", cluster.master_addr))
        .await
        .unwrap();
    let layout = master
        .get_shuffle_layout(pb::GetShuffleLayoutRequest {
            shuffle: Some(key.to_pb()),
            start_partition: 0,
            end_partition: partitions,
            wait_ms: 30_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(layout.committed, "{key} is not committed");
    layout
        .partitions
        .iter()
        .flat_map(|p| &p.locations)
        .filter(|l| l.ok && layout.workers[l.worker as usize].id == worker)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_hands_over_committed_and_running_shuffles_at_replication_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(3, dir.path()))
        .await
        .unwrap();
    let client = common::client(&cluster, 1);

    // A committed shuffle, and one whose maps are half written.
    let done = ShuffleKey::new("drain", 0);
    let done_ids = write_records(&client, &done, (4, 24), 800, 900).await;
    let running = ShuffleKey::new("drain", 1);
    let handle = client.register_shuffle(&running, 4, 24).await.unwrap();
    let mut running_ids = Vec::new();
    let write_map = |map: u32| {
        let (client, handle) = (&client, handle.clone());
        async move {
            let mut writer = client.writer(handle, map, 0).unwrap();
            let mut ids = Vec::new();
            let mut record = Vec::new();
            for seq in 0..800u32 {
                record.clear();
                sluice::records::encode(&mut record, map, seq, 40 + (seq as usize * 13) % 900);
                writer.write((seq * 7 + map) % 24, &record).await.unwrap();
                ids.push(RecordId { map, seq });
            }
            writer.finish().await.unwrap();
            ids
        }
    };
    for map in 0..2 {
        running_ids.extend(write_map(map).await);
    }
    assert!(copies_on(&cluster, &done, 24, "worker-0").await > 0);

    // Drain worker 0 through the master, within 20 s.
    let started = Instant::now();
    let asked = common::post_ok(
        &cluster.master_admins[0],
        "/api/workers/worker-0/decommission?deadline=20s",
    )
    .await;
    assert_eq!(asked.json()["drain_deadline"], "20s");
    cluster.worker_stopped(0, PATIENCE).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "the drain took {took:?}");

    // Nothing of either shuffle is left on it; the running shuffle's remaining maps revive
    // away from it, and every record of both is read exactly once.
    assert_eq!(copies_on(&cluster, &done, 24, "worker-0").await, 0);
    for map in 2..4 {
        running_ids.extend(write_map(map).await);
    }
    assert_eq!(copies_on(&cluster, &running, 24, "worker-0").await, 0);
    common::assert_exactly_once(
        &done_ids,
        &read_records(&client, &done, 0..24, None).await.unwrap(),
    );
    common::assert_exactly_once(
        &running_ids,
        &read_records(&client, &running, 0..24, None).await.unwrap(),
    );
    let events = api_ok(&cluster.master_admins[0], "/api/events").await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "handed_over" && e["worker"] == "worker-0"),
        "{events}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_reports_its_copies_lost_and_readers_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("drain-short", 0);
    write_records(&client, &key, (2, 8), 400, 900).await;
    assert!(copies_on(&cluster, &key, 8, "worker-1").await > 0);

    // A deadline shorter than the time a drain keeps for its reports: nothing is handed over.
    let worker = cluster.worker_admins()[1].clone().unwrap();
    common::post_ok(&worker, "/api/decommission?deadline=1s").await;
    cluster.worker_stopped(1, PATIENCE).await.unwrap();

    // The layout says so at once: the reader fails with DataLost, without retrying a worker
    // that is gone.
    let started = Instant::now();
    let error = read_records(&client, &key, 0..8, None)
        .await
        .expect_err("data of a worker that left without it cannot be read");
    assert_eq!(
        error.code(),
        sluice_protocol::ErrorCode::DataLost,
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the reader waited {:?}",
        started.elapsed()
    );
    let shuffles = api_ok(&cluster.master_admins[0], "/api/shuffles").await;
    let shuffle = shuffles["shuffles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app"] == "drain-short")
        .unwrap();
    assert_eq!(shuffle["state"], "failed", "{shuffle}");
    assert!(
        shuffle["lost_partitions"].as_u64().unwrap() > 0,
        "{shuffle}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_drain_serves_reads_until_its_shuffles_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("drain-planned", 0);
    let ids = write_records(&client, &key, (2, 8), 400, 900).await;
    assert!(copies_on(&cluster, &key, 8, "worker-1").await > 0);

    // An hour to go: the worker keeps its copies and serves them while the job reads.
    let worker = cluster.worker_admins()[1].clone().unwrap();
    common::post_ok(&worker, "/api/decommission?deadline=1h").await;
    common::assert_exactly_once(
        &ids,
        &read_records(&client, &key, 0..8, None).await.unwrap(),
    );
    assert!(copies_on(&cluster, &key, 8, "worker-1").await > 0);
    let status = api_ok(&worker, "/api/status").await;
    assert_eq!(status["draining"], true, "{status}");

    // The job is done with the shuffle: once it is deleted there is nothing to hand over, and
    // the worker goes.
    client.unregister_shuffle(&key).await.unwrap();
    cluster.worker_stopped(1, PATIENCE).await.unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_deadline_brings_a_planned_drain_forward() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("drain-sooner", 0);
    let ids = write_records(&client, &key, (2, 8), 400, 900).await;
    let worker = cluster.worker_admins()[1].clone().unwrap();
    for deadline in ["1h", "20s"] {
        let path = format!("/api/decommission?deadline={deadline}");
        common::post_ok(&worker, &path).await;
    }
    // The SIGTERM-like request wins: the worker hands over now and goes.
    cluster.worker_stopped(1, PATIENCE).await.unwrap();
    assert_eq!(copies_on(&cluster, &key, 8, "worker-1").await, 0);
    common::assert_exactly_once(
        &ids,
        &read_records(&client, &key, 0..8, None).await.unwrap(),
    );
    cluster.shutdown().await.unwrap();
}

/// At replication 2 a drained worker's copies are covered by their other copies, and it hands
/// them over anyway while time is left, each to a worker holding no copy of its partition: the
/// partitions keep two copies. A second worker that then dies without a drain loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_at_replication_2_keeps_every_partition_at_two_copies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(3, dir.path()))
        .await
        .unwrap();
    let client = common::client(&cluster, 2);
    let key = ShuffleKey::new("drain-r2", 0);
    let ids = write_records(&client, &key, (4, 12), 800, 900).await;
    let before = copies_on(&cluster, &key, 12, "worker-0").await;
    assert!(before > 0);
    common::post_ok(
        &cluster.master_admins[0],
        "/api/workers/worker-0/decommission?deadline=20s",
    )
    .await;
    cluster.worker_stopped(0, PATIENCE).await.unwrap();
    assert_eq!(copies_on(&cluster, &key, 12, "worker-0").await, 0);
    // Every partition has two committed copies, on the two workers left.
    let on_1 = copies_on(&cluster, &key, 12, "worker-1").await;
    let on_2 = copies_on(&cluster, &key, 12, "worker-2").await;
    assert_eq!((on_1, on_2), (12, 12));

    cluster.stop_worker(1).await.unwrap();
    let seen = read_records(&client, &key, 0..12, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    cluster.shutdown().await.unwrap();
}
