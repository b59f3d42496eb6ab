//! The master against misbehaving workers and oversized requests, on a real in-process cluster.
//!
//! - A worker whose data port accepts connections and never answers (a black hole: a
//!   SIGSTOPped process, a half-dead node) does not stall other registrations and revives, and
//!   one that stopped heartbeating gets no new partitions long before it is declared lost.
//! - Every limit (maps and partitions per shuffle, live shuffles and partitions per application
//!   and per cluster, epochs per partition, layout answer size) refuses with an error naming its
//!   config key.
//! - Reserve and Commit go to workers in pages; the layout comes back complete.
//! - Replicas go to another zone than their primary.
//! - A worker id held by a live worker at another address is refused; a restarted worker whose
//!   old incarnation stopped heartbeating is accepted, and a refused worker keeps retrying.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice::local::{LocalCluster, LocalOptions};
use sluice::records::RecordId;
use sluice_client::{ClientConfig, SluiceClient};
use sluice_master::MasterConfig;
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::{ErrorCode, ShuffleKey};
use sluice_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

type Master = MasterClient<Channel>;

async fn master(cluster: &LocalCluster) -> Master {
    MasterClient::connect(format!("http://{}", cluster.master_addr))
        .await
        .expect("master reachable")
}

/// A worker that exists only on the control plane: it registers and heartbeats over gRPC, and
/// its push port accepts connections that are never read from or answered.
struct BlackHole {
    info: pb::WorkerInfo,
    /// Stops the heartbeats (the port stays a black hole).
    heartbeats: CancellationToken,
    stop: CancellationToken,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.heartbeats.cancel();
        self.stop.cancel();
    }
}

fn disks(free_bytes: u64) -> Vec<pb::DiskStatus> {
    vec![pb::DiskStatus {
        path: "/black-hole".into(),
        capacity_bytes: free_bytes,
        free_bytes,
        flush_latency_us: 0,
        healthy: true,
    }]
}

/// Starts a black-hole worker `id` and waits until the master has accepted it. With a huge
/// `free_bytes` placement favours it over every real worker.
async fn black_hole(master: &Master, id: &str, free_bytes: u64, every: Duration) -> BlackHole {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = u32::from(listener.local_addr().unwrap().port());
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => return,
                },
                _ = token.cancelled() => return,
            }
        }
    });
    let info = pb::WorkerInfo {
        id: id.into(),
        host: "127.0.0.1".into(),
        push_port: port,
        fetch_port: port,
        ..Default::default()
    };
    let register = pb::RegisterWorkerRequest {
        worker: Some(info.clone()),
        disks: disks(free_bytes),
        heartbeat_interval_ms: every.as_millis() as u64,
        ..Default::default()
    };
    master
        .clone()
        .register_worker(register.clone())
        .await
        .expect("black hole registers");
    let heartbeats = CancellationToken::new();
    let token = heartbeats.clone();
    let mut client = master.clone();
    let worker_id = id.to_string();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = token.cancelled() => return,
            }
            let beat = client
                .worker_heartbeat(pb::WorkerHeartbeatRequest {
                    worker_id: worker_id.clone(),
                    disks: disks(free_bytes),
                    state: pb::WorkerState::Active as i32,
                    ..Default::default()
                })
                .await;
            if beat.is_ok_and(|b| b.into_inner().reregister) {
                let _ = client.register_worker(register.clone()).await;
            }
        }
    });
    BlackHole {
        info,
        heartbeats,
        stop,
    }
}

fn key(app: &str, shuffle_id: u32) -> pb::ShuffleKey {
    ShuffleKey::new(app, shuffle_id).to_pb()
}

async fn register_shuffle(
    master: &Master,
    app: &str,
    shuffle_id: u32,
    partitions: u32,
) -> Result<pb::ShuffleLocations, tonic::Status> {
    let response = master
        .clone()
        .register_shuffle(pb::RegisterShuffleRequest {
            shuffle: Some(key(app, shuffle_id)),
            num_maps: 1,
            num_partitions: partitions,
            replication: 1,
        })
        .await?;
    Ok(response.into_inner().locations.unwrap_or_default())
}

/// The ids of the workers holding a placement's current primaries.
fn primaries(locations: &pb::ShuffleLocations) -> Vec<String> {
    locations
        .primary_worker
        .iter()
        .map(|w| locations.workers[*w as usize].id.clone())
        .collect()
}

/// How long a reservation on a worker that never answers may take before it is given up.
fn reserve_timeout() -> Duration {
    MasterConfig::default().reserve_timeout
}

async fn cluster_with(workers: usize, dir: &Path, master: MasterConfig) -> LocalCluster {
    let mut options = LocalOptions::new(workers, dir);
    options.master = master;
    LocalCluster::start(options).await.expect("cluster starts")
}

async fn status(master: &Master) -> pb::ClusterStatusResponse {
    master
        .clone()
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Polls `condition` on the cluster status until it holds; panics after `within`.
async fn wait_for_status(
    master: &Master,
    within: Duration,
    what: &str,
    condition: impl Fn(&pb::ClusterStatusResponse) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let status = status(master).await;
        if condition(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker started beside a cluster's own, with its own configuration.
struct ExtraWorker {
    push_port: u32,
    stop: CancellationToken,
    task: JoinHandle<Result<(), sluice_worker::WorkerError>>,
}

impl ExtraWorker {
    async fn start(cluster: &LocalCluster, data_dir: &Path, config: WorkerConfig) -> ExtraWorker {
        let push = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fetch = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let push_port = u32::from(push.local_addr().unwrap().port());
        let config = WorkerConfig {
            master: cluster.master_addr.clone(),
            data_dirs: vec![data_dir.to_path_buf()],
            memory_budget: bytesize::ByteSize::mib(64),
            ..config
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(sluice_worker::run(
            config,
            sluice_worker::Listeners {
                push,
                fetch,
                admin: None,
            },
            stop.clone(),
        ));
        ExtraWorker {
            push_port,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// What a refused call's message says, checking its code.
fn refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: ErrorCode) -> String {
    let status = result.expect_err("refused");
    assert_eq!(
        ErrorCode::from_grpc(status.code()),
        code,
        "{}",
        status.message()
    );
    status.message().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_hole_worker_does_not_stall_registrations_and_revives() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let master = master(&cluster).await;
    // Shuffles placed before the black hole joins, for revives to move afterwards.
    for shuffle_id in 100..104 {
        register_shuffle(&master, "black-hole", shuffle_id, 4)
            .await
            .unwrap();
    }
    let hole = black_hole(
        &master,
        "black-hole",
        u64::MAX / 4,
        Duration::from_millis(200),
    )
    .await;

    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for shuffle_id in 0..6 {
        let master = master.clone();
        calls.spawn(async move {
            let locations = register_shuffle(&master, "black-hole", shuffle_id, 8).await?;
            Ok::<_, tonic::Status>(primaries(&locations))
        });
    }
    for shuffle_id in 100..104 {
        let mut master = master.clone();
        calls.spawn(async move {
            let revived = master
                .revive(pb::ReviveRequest {
                    shuffle: Some(key("black-hole", shuffle_id)),
                    failed: (0..4)
                        .map(|partition| pb::FailedLocation {
                            partition,
                            epoch: 0,
                        })
                        .collect(),
                    reason: "test".into(),
                })
                .await?
                .into_inner();
            Ok(revived
                .locations
                .into_iter()
                .map(|l| l.primary.unwrap_or_default().id)
                .collect())
        });
    }
    // Generous: one reservation timeout on the black hole, then placement elsewhere.
    let bound = reserve_timeout() * 3;
    let mut answers = 0;
    while let Some(joined) =
        tokio::time::timeout(bound.saturating_sub(started.elapsed()), calls.join_next())
            .await
            .unwrap_or_else(|_| panic!("{} calls still pending after {bound:?}", calls.len()))
    {
        let placed: Vec<String> = joined.unwrap().expect("call succeeds");
        assert!(
            placed.iter().all(|id| *id != hole.info.id),
            "partitions left on the black hole: {placed:?}"
        );
        answers += 1;
    }
    assert_eq!(answers, 10);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stopped_heartbeating_gets_no_new_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(1, dir.path());
    // A slow heartbeat, so that a loaded machine never makes the real worker look stopped.
    options.worker.heartbeat_interval = Duration::from_secs(2);
    let cluster = LocalCluster::start(options).await.unwrap();
    let master = master(&cluster).await;
    let every = Duration::from_millis(200);
    let hole = black_hole(&master, "stopped", u64::MAX / 4, every).await;
    // SIGSTOP, as far as the master can tell: no heartbeats, the port still accepts.
    hole.heartbeats.cancel();
    wait_for_status(
        &master,
        Duration::from_secs(10),
        "two missed heartbeats",
        |s| {
            s.workers.iter().any(|w| {
                w.worker.as_ref().is_some_and(|i| i.id == "stopped")
                    && w.alive
                    && w.heartbeat_age_ms > 3 * every.as_millis() as u64
            })
        },
    )
    .await;
    // Still alive (worker_timeout is 30 s), but no reservation is even tried on it.
    let started = Instant::now();
    let locations = register_shuffle(&master, "stopped", 0, 16).await.unwrap();
    assert!(
        started.elapsed() < reserve_timeout(),
        "registration took {:?}",
        started.elapsed()
    );
    assert!(primaries(&locations).iter().all(|id| id != "stopped"));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_refuses_with_an_error_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = MasterConfig {
        max_maps_per_shuffle: 10,
        max_partitions_per_shuffle: 8,
        max_live_shuffles_per_app: 2,
        max_live_partitions_per_app: 12,
        max_live_shuffles: 4,
        max_live_partitions: 20,
        ..MasterConfig::default()
    };
    let cluster = cluster_with(1, dir.path(), config).await;
    let master = master(&cluster).await;
    let register = |app: &'static str, shuffle_id: u32, maps: u32, partitions: u32| {
        let mut master = master.clone();
        async move {
            master
                .register_shuffle(pb::RegisterShuffleRequest {
                    shuffle: Some(key(app, shuffle_id)),
                    num_maps: maps,
                    num_partitions: partitions,
                    replication: 1,
                })
                .await
        }
    };
    let too_large = ErrorCode::InvalidRequest;
    let over_quota = ErrorCode::Busy; // gRPC ResourceExhausted: retry after unregistering
    let message = refusal(register("a", 0, 11, 1).await, too_large);
    assert!(message.contains("max_maps_per_shuffle"), "{message}");
    let message = refusal(register("a", 0, 1, 9).await, too_large);
    assert!(message.contains("max_partitions_per_shuffle"), "{message}");

    register("a", 0, 10, 4).await.unwrap();
    register("a", 1, 10, 4).await.unwrap();
    let message = refusal(register("a", 2, 1, 1).await, over_quota);
    assert!(message.contains("max_live_shuffles_per_app"), "{message}");
    register("b", 0, 1, 8).await.unwrap();
    let message = refusal(register("b", 1, 1, 8).await, over_quota);
    assert!(message.contains("max_live_partitions_per_app"), "{message}");
    let message = refusal(register("c", 0, 1, 8).await, over_quota);
    assert!(message.contains("max_live_partitions"), "{message}");
    register("c", 0, 1, 4).await.unwrap();
    let message = refusal(register("d", 0, 1, 1).await, over_quota);
    assert!(message.contains("max_live_shuffles"), "{message}");
    // Registering a registered shuffle again is no new shuffle.
    register("c", 0, 1, 4).await.unwrap();
    // Room again once a shuffle is unregistered.
    master
        .clone()
        .unregister_shuffle(pb::UnregisterShuffleRequest {
            shuffle: Some(key("a", 0)),
        })
        .await
        .unwrap();
    register("d", 0, 1, 1).await.unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_not_revived_past_max_epochs_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let config = MasterConfig {
        max_epochs_per_partition: 3,
        ..MasterConfig::default()
    };
    let cluster = cluster_with(2, dir.path(), config).await;
    let master = master(&cluster).await;
    register_shuffle(&master, "epochs", 0, 2).await.unwrap();
    let revive = |epoch| {
        let mut master = master.clone();
        async move {
            master
                .revive(pb::ReviveRequest {
                    shuffle: Some(key("epochs", 0)),
                    failed: vec![pb::FailedLocation {
                        partition: 1,
                        epoch,
                    }],
                    reason: "test".into(),
                })
                .await
                .map(|r| r.into_inner().locations[0].epoch)
        }
    };
    assert_eq!(revive(0).await.unwrap(), 1);
    assert_eq!(revive(1).await.unwrap(), 2);
    // A stale failure changes nothing, also at the cap.
    assert_eq!(revive(1).await.unwrap(), 2);
    let message = refusal(revive(2).await, ErrorCode::InvalidRequest);
    assert!(message.contains("max_epochs_per_partition"), "{message}");
    cluster.shutdown().await.unwrap();
}

async fn read_all(
    client: &SluiceClient,
    key: &ShuffleKey,
    partitions: u32,
) -> HashMap<RecordId, usize> {
    common::read_records(client, key, 0..partitions, None)
        .await
        .unwrap()
}

async fn layout(
    master: &Master,
    key: &ShuffleKey,
    partitions: std::ops::Range<u32>,
) -> Result<pb::GetShuffleLayoutResponse, tonic::Status> {
    Ok(master
        .clone()
        .get_shuffle_layout(pb::GetShuffleLayoutRequest {
            shuffle: Some(key.to_pb()),
            start_partition: partitions.start,
            end_partition: partitions.end,
            wait_ms: 30_000,
        })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_and_commit_go_to_workers_in_pages_and_the_layout_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    // Seven locations per frame: each worker's ~100 locations take 15 frames each way.
    let config = MasterConfig {
        max_locations_per_frame: 7,
        ..MasterConfig::default()
    };
    let cluster = cluster_with(2, dir.path(), config).await;
    let client = SluiceClient::new(ClientConfig {
        replication: 2,
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let key = ShuffleKey::new("paged", 0);
    let ids = common::write_records(&client, &key, (3, 100), 300, 500).await;
    let master = master(&cluster).await;
    let layout = layout(&master, &key, 0..100).await.unwrap();
    assert!(layout.committed);
    assert_eq!(layout.partitions.len(), 100);
    for partition in &layout.partitions {
        // Every partition was reserved at the first try (epoch 0 only) and both copies committed.
        let copies: Vec<_> = partition
            .locations
            .iter()
            .map(|l| (l.epoch, l.ok))
            .collect();
        assert_eq!(
            copies,
            vec![(0, true), (0, true)],
            "partition {}",
            partition.partition
        );
    }
    let seen = read_all(&client, &key, 100).await;
    assert_eq!(seen.len(), ids.len());
    assert!(seen.values().all(|n| *n == 1));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_answer_above_the_message_limit_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = MasterConfig {
        max_message_size: bytesize::ByteSize::kib(64),
        ..MasterConfig::default()
    };
    let cluster = cluster_with(1, dir.path(), config).await;
    let master = master(&cluster).await;
    let key = ShuffleKey::new("big-layout", 0);
    register_shuffle(&master, "big-layout", 0, 2000)
        .await
        .unwrap();
    // One map that reports something for every partition: about 60 bytes of layout each.
    master
        .clone()
        .mapper_end(pb::MapperEndRequest {
            shuffle: Some(key.to_pb()),
            map_id: 0,
            attempt: 0,
            partitions: (0..2000)
                .map(|partition| pb::PartitionStats {
                    partition,
                    stats: Some(pb::BatchStats {
                        bytes: 1 << 20,
                        batches: 4,
                        checksum: 0xdead_beef,
                    }),
                })
                .collect(),
        })
        .await
        .unwrap();
    let message = refusal(
        layout(&master, &key, 0..2000).await,
        ErrorCode::InvalidRequest,
    );
    assert!(message.contains("max_message_size"), "{message}");
    for start in (0..2000).step_by(500) {
        let page = layout(&master, &key, start..start + 500).await.unwrap();
        assert!(page.committed);
        let numbers: Vec<u32> = page.partitions.iter().map(|p| p.partition).collect();
        assert_eq!(numbers, (start..start + 500).collect::<Vec<_>>());
        assert!(page.partitions.iter().all(|p| p.expected.len() == 1));
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_go_to_another_zone() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(2, dir.path());
    // Two workers on one node of zone a; the third in zone b.
    options.worker.zone = "zone-a".into();
    options.worker.node = "node-1".into();
    let cluster = LocalCluster::start(options).await.unwrap();
    let master = master(&cluster).await;
    let other = ExtraWorker::start(
        &cluster,
        &dir.path().join("zone-b"),
        WorkerConfig {
            id: "worker-b".into(),
            zone: "zone-b".into(),
            node: "node-2".into(),
            heartbeat_interval: Duration::from_millis(200),
            ..WorkerConfig::default()
        },
    )
    .await;
    wait_for_status(&master, Duration::from_secs(30), "three workers", |s| {
        s.workers.iter().filter(|w| w.alive).count() == 3
    })
    .await;
    let status = status(&master).await;
    let zones: HashMap<String, String> = status
        .workers
        .iter()
        .filter_map(|w| w.worker.as_ref())
        .map(|w| (w.id.clone(), w.zone.clone()))
        .collect();
    assert_eq!(zones["worker-b"], "zone-b");
    assert_eq!(zones["worker-0"], "zone-a");

    let locations = master
        .clone()
        .register_shuffle(pb::RegisterShuffleRequest {
            shuffle: Some(key("zones", 0)),
            num_maps: 1,
            num_partitions: 30,
            replication: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .locations
        .unwrap();
    let zone = |index: u32| locations.workers[index as usize].zone.clone();
    for (p, (primary, replica)) in locations
        .primary_worker
        .iter()
        .zip(&locations.replica_worker)
        .enumerate()
    {
        assert_ne!(zone(*primary), zone(*replica), "partition {p}");
    }
    other.stop().await;
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_id_held_by_a_live_worker_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(1, dir.path());
    // A slow heartbeat, so that a loaded machine never makes the live worker look stopped.
    let every = Duration::from_secs(1);
    options.worker.heartbeat_interval = every;
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let master = master(&cluster).await;
    let live = cluster.workers()[0].clone();
    let impostor = pb::WorkerInfo {
        push_port: live.push_port + 1000,
        fetch_port: live.fetch_port + 1000,
        ..live.clone()
    };
    let register = |info: &pb::WorkerInfo| pb::RegisterWorkerRequest {
        worker: Some(info.clone()),
        disks: disks(1 << 30),
        heartbeat_interval_ms: every.as_millis() as u64,
        ..Default::default()
    };
    let message = refusal(
        master.clone().register_worker(register(&impostor)).await,
        ErrorCode::InvalidRequest,
    );
    assert!(
        message.contains(&live.id) && message.contains(&live.push_addr()),
        "{message}"
    );
    // The live worker keeps its place.
    let known = status(&master).await.workers;
    assert_eq!(known.len(), 1);
    assert_eq!(known[0].worker.as_ref().unwrap().push_port, live.push_port);
    // The same worker registering again at its own address is accepted (a re-registration).
    master
        .clone()
        .register_worker(register(&live))
        .await
        .expect("the same address is accepted");

    // A real worker under the same id at another address is refused and keeps retrying ...
    let second = ExtraWorker::start(
        &cluster,
        &dir.path().join("second"),
        WorkerConfig {
            id: live.id.clone(),
            heartbeat_interval: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
    )
    .await;
    // ... and once the live worker stops, it is accepted as soon as the old one missed its
    // heartbeats, long before the old one would be declared lost (as a restarted pod is).
    cluster.stop_worker(0).await.unwrap();
    let within = MasterConfig::default().worker_timeout / 2;
    wait_for_status(&master, within, "the second incarnation registered", |s| {
        s.workers.iter().any(|w| {
            w.alive
                && w.worker
                    .as_ref()
                    .is_some_and(|i| i.id == live.id && i.push_port == second.push_port)
        })
    })
    .await;
    second.stop().await;
    cluster.shutdown().await.unwrap();
}
