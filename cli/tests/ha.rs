//! The master's state survives: one master restarted on its data directory keeps every
//! shuffle, and three masters keep serving when their leader stops. Masters and workers run
//! in-process on loopback ports; records are written and read back by the real client.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice::records::RecordId;
use sluice_client::{ClientConfig, SluiceClient};
use sluice_master::MasterConfig;
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::ShuffleKey;
use sluice_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{read_records, write_records};

struct Node {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Node {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("node stops")
            .unwrap();
    }
}

/// A loopback address no one listens on (bound, then released).
async fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

fn master_config(dir: &Path, peers: &[String], id: usize) -> MasterConfig {
    MasterConfig {
        listen: peers[id].clone(),
        data_dir: dir.join(format!("master-{id}")),
        peers: if peers.len() > 1 {
            peers.to_vec()
        } else {
            Vec::new()
        },
        id: Some(id as u64),
        worker_timeout: Duration::from_secs(3),
        commit_timeout: Duration::from_secs(10),
        ..MasterConfig::default()
    }
}

async fn start_master(config: MasterConfig) -> Node {
    let listener = TcpListener::bind(&config.listen).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { sluice_master::run(config, listener, stop).await.unwrap() }
    });
    Node { stop, task }
}

async fn start_worker(dir: &Path, id: usize, masters: &str) -> Node {
    let config = WorkerConfig {
        id: format!("w{id}"),
        master: masters.to_string(),
        data_dirs: vec![dir.join(format!("w{id}"))],
        heartbeat_interval: Duration::from_millis(200),
        memory_budget: bytesize::ByteSize::mib(128),
        ..WorkerConfig::default()
    };
    let listeners = sluice_worker::Listeners {
        push: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        fetch: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: None,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { sluice_worker::run(config, listeners, stop).await.unwrap() }
    });
    Node { stop, task }
}

fn client(masters: &str) -> SluiceClient {
    SluiceClient::new(ClientConfig {
        replication: 2,
        ..ClientConfig::new(masters.to_string())
    })
    .unwrap()
}

async fn status(addr: &str) -> Option<pb::MasterStatusResponse> {
    let mut master = MasterClient::connect(format!("http://{addr}")).await.ok()?;
    let status = master
        .master_status(pb::MasterStatusRequest {})
        .await
        .ok()?;
    Some(status.into_inner())
}

/// Waits until `n` live workers are seen by the leader, and returns the leader's address.
async fn leader_with_workers(masters: &[String], n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for addr in masters {
            let Some(status) = status(addr).await else {
                continue;
            };
            let Some(leader) = status.leader else {
                continue;
            };
            if leader.addr != *addr {
                continue;
            }
            let Ok(mut master) = MasterClient::connect(format!("http://{addr}")).await else {
                continue;
            };
            // A leader that lost its role meanwhile refuses: look again.
            let Ok(cluster) = master.cluster_status(pb::ClusterStatusRequest {}).await else {
                continue;
            };
            if cluster.get_ref().workers.iter().filter(|w| w.alive).count() >= n {
                return leader.addr;
            }
        }
        assert!(Instant::now() < deadline, "no leader with {n} workers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_exactly_once(ids: &[RecordId], seen: &HashMap<RecordId, usize>) {
    assert_eq!(
        seen.len(),
        ids.len(),
        "records read: {} of {}",
        seen.len(),
        ids.len()
    );
    for id in ids {
        assert_eq!(seen.get(id), Some(&1), "record {id:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_keeps_every_shuffle_committed_or_running() {
    let dir = tempfile::tempdir().unwrap();
    let peers = vec![free_addr().await];
    let master = start_master(master_config(dir.path(), &peers, 0)).await;
    let workers = [
        start_worker(dir.path(), 0, &peers[0]).await,
        start_worker(dir.path(), 1, &peers[0]).await,
    ];
    leader_with_workers(&peers, 2).await;
    let client = client(&peers[0]);

    // One shuffle committed before the restart, one with half its maps ended.
    let done = ShuffleKey::new("app-restart", 0);
    let done_ids = write_records(&client, &done, (3, 8), 400, 300).await;
    let running = ShuffleKey::new("app-restart", 1);
    let handle = client.register_shuffle(&running, 4, 8).await.unwrap();
    let mut running_ids = Vec::new();
    for map in 0..2 {
        running_ids.extend(write_map(&client, &handle, map).await);
    }

    master.stop().await;
    let master = start_master(master_config(dir.path(), &peers, 0)).await;
    leader_with_workers(&peers, 2).await;

    // The writers' handle (cached before the restart) still works: same placements.
    for map in 2..4 {
        running_ids.extend(write_map(&client, &handle, map).await);
    }
    let seen = read_records(&client, &done, 0..8, None).await.unwrap();
    assert_exactly_once(&done_ids, &seen);
    let seen = read_records(&client, &running, 0..8, None).await.unwrap();
    assert_exactly_once(&running_ids, &seen);

    master.stop().await;
    for worker in workers {
        worker.stop().await;
    }
}

async fn write_map(
    client: &SluiceClient,
    handle: &std::sync::Arc<sluice_client::ShuffleHandle>,
    map: u32,
) -> Vec<RecordId> {
    let mut writer = client.writer(handle.clone(), map, 0).unwrap();
    let mut ids = Vec::new();
    let mut record = Vec::new();
    for seq in 0..300 {
        record.clear();
        sluice::records::encode(&mut record, map, seq, 60 + (seq as usize * 7) % 200);
        writer
            .write((seq + map) % handle.num_partitions, &record)
            .await
            .unwrap();
        ids.push(RecordId { map, seq });
    }
    writer.finish().await.unwrap();
    ids
}

/// Three masters and two workers, once a leader sees both workers.
struct Ha {
    peers: Vec<String>,
    masters: Vec<Option<Node>>,
    endpoints: String,
    workers: [Node; 2],
    leader: String,
}

impl Ha {
    async fn start(dir: &Path) -> Ha {
        let mut peers = Vec::new();
        for _ in 0..3 {
            peers.push(free_addr().await);
        }
        let mut masters = Vec::new();
        for id in 0..3 {
            masters.push(Some(start_master(master_config(dir, &peers, id)).await));
        }
        let endpoints = peers.join(",");
        let workers = [
            start_worker(dir, 0, &endpoints).await,
            start_worker(dir, 1, &endpoints).await,
        ];
        let leader = leader_with_workers(&peers, 2).await;
        Ha {
            peers,
            masters,
            endpoints,
            workers,
            leader,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_keep_serving_when_the_leader_stops() {
    let dir = tempfile::tempdir().unwrap();
    let Ha {
        peers,
        mut masters,
        endpoints,
        workers,
        leader,
    } = Ha::start(dir.path()).await;

    // A follower redirects to the leader (once the leader's heartbeats reached it).
    let follower = peers.iter().find(|p| **p != leader).unwrap();
    let mut direct = MasterClient::connect(format!("http://{follower}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = direct
            .register_shuffle(pb::RegisterShuffleRequest {
                shuffle: Some(ShuffleKey::new("app-probe", 0).to_pb()),
                num_maps: 1,
                num_partitions: 1,
                replication: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        let hint = refused
            .metadata()
            .get("sluice-leader")
            .map(|v| v.to_str().unwrap().to_string());
        if hint.is_some() || Instant::now() > deadline {
            assert_eq!(hint.as_deref(), Some(leader.as_str()), "{refused:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let client = client(&endpoints);
    let first = ShuffleKey::new("app-ha", 0);
    let first_ids = write_records(&client, &first, (2, 6), 300, 200).await;
    let second = ShuffleKey::new("app-ha", 1);
    let handle = client.register_shuffle(&second, 4, 6).await.unwrap();
    let mut second_ids = write_map(&client, &handle, 0).await;

    let index = peers.iter().position(|p| *p == leader).unwrap();
    let stopped = Instant::now();
    masters[index].take().unwrap().stop().await;
    let rest: Vec<String> = peers.iter().filter(|p| **p != leader).cloned().collect();
    let new_leader = leader_with_workers(&rest, 2).await;
    eprintln!("new leader {new_leader} after {:?}", stopped.elapsed());

    for map in 1..4 {
        second_ids.extend(write_map(&client, &handle, map).await);
    }
    let seen = read_records(&client, &first, 0..6, None).await.unwrap();
    assert_exactly_once(&first_ids, &seen);
    let seen = read_records(&client, &second, 0..6, None).await.unwrap();
    assert_exactly_once(&second_ids, &seen);

    // The stopped master comes back as a follower and catches up.
    masters[index] = Some(start_master(master_config(dir.path(), &peers, index)).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader_applied = status(&new_leader).await.map(|s| s.last_applied);
        let back = status(&leader).await;
        if let (Some(applied), Some(back)) = (leader_applied, back) {
            if back.last_applied >= applied
                && back.leader.as_ref().map(|l| l.addr.as_str()) == Some(new_leader.as_str())
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted master did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for master in masters.into_iter().flatten() {
        master.stop().await;
    }
    for worker in workers {
        worker.stop().await;
    }
}

/// A worker holds a shuffle the master does not know (the master's state was lost: a fresh
/// data directory). The master deletes it on the worker after `orphan_grace`, and learns
/// nothing from the worker's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_deleted_after_the_grace_period_and_never_learned() {
    let dir = tempfile::tempdir().unwrap();
    let peers = vec![free_addr().await];
    let config = |data: &Path| MasterConfig {
        orphan_grace: Duration::from_secs(1),
        ..master_config(data, &peers, 0)
    };
    let first = tempfile::tempdir().unwrap();
    let master = start_master(config(first.path())).await;
    let worker = start_worker(dir.path(), 0, &peers[0]).await;
    leader_with_workers(&peers, 1).await;
    let client = SluiceClient::new(ClientConfig {
        replication: 1,
        ..ClientConfig::new(peers[0].clone())
    })
    .unwrap();
    let key = ShuffleKey::new("app-orphan", 3);
    let ids = write_records(&client, &key, (2, 4), 200, 100).await;
    // Read back: the shuffle is committed, its files are on the worker's disk.
    let seen = read_records(&client, &key, 0..4, None).await.unwrap();
    assert_exactly_once(&ids, &seen);
    let shuffle_dir = dir.path().join("w0");
    assert!(!data_files(&shuffle_dir).is_empty());

    // The master comes back without its state.
    master.stop().await;
    let second = tempfile::tempdir().unwrap();
    let master = start_master(config(second.path())).await;
    leader_with_workers(&peers, 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !data_files(&shuffle_dir).is_empty() {
        assert!(Instant::now() < deadline, "the orphan was never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut direct = MasterClient::connect(format!("http://{}", peers[0]))
        .await
        .unwrap();
    let cluster = direct
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cluster.shuffles, 0,
        "the master learned a shuffle from a worker"
    );

    master.stop().await;
    worker.stop().await;
}

/// The `.data` files under `dir`; directories deleted meanwhile count as empty.
fn data_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "data") {
                out.push(path);
            }
        }
    }
    out
}

/// A master whose disk is lost is replaced the documented way: removed, started again with an
/// empty data directory (it joins, it does not found a cluster of its own), added back; then
/// it votes: the cluster survives the loss of another master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_with_a_lost_disk_is_removed_and_added_back() {
    let dir = tempfile::tempdir().unwrap();
    let Ha {
        peers,
        mut masters,
        endpoints,
        workers,
        leader,
    } = Ha::start(dir.path()).await;
    let client = client(&endpoints);
    let before = ShuffleKey::new("app-replace", 0);
    let before_ids = write_records(&client, &before, (2, 4), 200, 100).await;

    // Replace a follower: remove it, wipe it, start it empty, add it.
    let lost = (0..3).find(|i| peers[*i] != leader).unwrap();
    sluice::admin::change(&endpoints, None, Some(lost as u64))
        .await
        .unwrap();
    masters[lost].take().unwrap().stop().await;
    std::fs::remove_dir_all(dir.path().join(format!("master-{lost}"))).unwrap();
    masters[lost] = Some(start_master(master_config(dir.path(), &peers, lost)).await);
    let joined = status(&peers[lost]).await.unwrap();
    assert!(
        joined.voters.is_empty(),
        "an empty master founded a cluster: {joined:?}"
    );
    sluice::admin::change(&endpoints, Some((lost as u64, peers[lost].clone())), None)
        .await
        .unwrap();
    let view = status(&leader).await.unwrap();
    assert_eq!(view.voters.len(), 3, "{view:?}");

    // It holds the log: with the leader gone, it and the third master elect a new one.
    let index = peers.iter().position(|p| *p == leader).unwrap();
    masters[index].take().unwrap().stop().await;
    let rest: Vec<String> = peers.iter().filter(|p| **p != leader).cloned().collect();
    leader_with_workers(&rest, 2).await;
    let seen = read_records(&client, &before, 0..4, None).await.unwrap();
    assert_exactly_once(&before_ids, &seen);
    let after = ShuffleKey::new("app-replace", 1);
    let after_ids = write_records(&client, &after, (2, 4), 200, 100).await;
    let seen = read_records(&client, &after, 0..4, None).await.unwrap();
    assert_exactly_once(&after_ids, &seen);

    for master in masters.into_iter().flatten() {
        master.stop().await;
    }
    for worker in workers {
        worker.stop().await;
    }
}
