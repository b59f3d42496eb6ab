//! The master's Raft storage and network: openraft's conformance suite over [`LogStore`] and
//! [`StateMachineStore`], what survives a reopen, corrupt files, and three masters over loopback
//! gRPC electing a leader, replicating, and failing over when the leader stops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, Config, Entry, EntryPayload, LogId, Membership, Raft,
    RaftLogReader, RaftSnapshotBuilder, StorageError, StoredMembership, Vote,
};
use sluice_master::raft::{
    Command, LogStore, Machine, Network, NodeId, RaftServer, StateMachineStore, TypeConfig,
    LOG_FILE, SNAPSHOT_FILE,
};
use sluice_master::state::State;
use sluice_protocol::pb;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

/// A machine that remembers what it applied: `AppRemoved:<app>` per command.
#[derive(Default)]
struct Applied(Vec<String>);

impl Machine for Applied {
    fn apply(&mut self, command: &pb::MasterCommand) -> pb::MasterReply {
        let name = match &command.command {
            Some(pb::master_command::Command::AppRemoved(removed)) => {
                format!("AppRemoved:{}", removed.app_id)
            }
            _ => Command(command.clone()).to_string(),
        };
        self.0.push(name);
        pb::MasterReply::default()
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn app_removed(app: &str) -> Command {
    Command(pb::MasterCommand {
        command: Some(pb::master_command::Command::AppRemoved(pb::AppRemoved {
            app_id: app.to_string(),
        })),
    })
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, app: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(app_removed(app)),
    }
}

type Store = StateMachineStore<Applied>;

fn machine() -> Arc<Mutex<Applied>> {
    Arc::new(Mutex::new(Applied::default()))
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, Store, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, Store), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path())?;
        let sm = StateMachineStore::open(dir.path(), machine())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_conformance_suite() {
    Suite::test_all(Builder).unwrap();
}

/// The same stores around the master's own state machine.
struct MasterStateBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<State>, TempDir> for MasterStateBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore<State>), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path())?;
        let state = Arc::new(Mutex::new(State::default()));
        let sm = StateMachineStore::open(dir.path(), state)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_conformance_suite_on_the_master_state() {
    Suite::test_all(MasterStateBuilder).unwrap();
}

#[tokio::test]
async fn log_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=5).map(|i| normal(2, i, &format!("app-{i}"))).collect();
    let vote = Vote::new_committed(2, 1);
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(log_id(2, 4))).await.unwrap();
        log.purge(log_id(2, 1)).await.unwrap();
        log.truncate(log_id(2, 5)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 4)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 1)));
    assert_eq!(state.last_log_id, Some(log_id(2, 4)));
    assert_eq!(log.try_get_log_entries(0..).await.unwrap(), entries[1..4]);
    let mut reader = log.get_log_reader().await;
    assert_eq!(
        reader.try_get_log_entries(3..=3).await.unwrap(),
        entries[2..3]
    );
}

#[tokio::test]
async fn snapshot_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let membership = Membership::new(vec![[1, 2, 3].into()], None);
    let built = {
        let mut sm = StateMachineStore::open(dir.path(), machine()).unwrap();
        sm.apply([
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Membership(membership.clone()),
            },
            normal(1, 2, "a"),
            normal(1, 3, "b"),
        ])
        .await
        .unwrap();
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
        // Applied after the snapshot: gone on reopen (openraft replays it from the log).
        sm.apply([normal(1, 4, "c")]).await.unwrap();
        snapshot
    };

    let restored = machine();
    let mut sm = StateMachineStore::open(dir.path(), restored.clone()).unwrap();
    assert_eq!(restored.lock().unwrap().0, ["AppRemoved:a", "AppRemoved:b"]);
    let (last_applied, last_membership) = sm.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(1, 3)));
    assert_eq!(
        last_membership,
        StoredMembership::new(Some(log_id(1, 1)), membership)
    );
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.into_inner(), built.snapshot.into_inner());
}

#[tokio::test]
async fn torn_snapshot_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = StateMachineStore::open(dir.path(), machine()).unwrap();
        sm.apply([normal(1, 1, "a")]).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    let path = dir.path().join("snapshot").join(SNAPSHOT_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    for cut in [len - 1, len / 2, 10, 0] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let error = StateMachineStore::open(dir.path(), machine())
            .err()
            .unwrap_or_else(|| panic!("a snapshot cut to {cut} bytes opened"));
        assert!(
            error.to_string().contains(&*path.to_string_lossy()),
            "{error}"
        );
    }
    std::fs::write(&path, b"not a snapshot at all, but long enough").unwrap();
    assert!(StateMachineStore::open(dir.path(), machine()).is_err());
}

#[tokio::test]
async fn garbage_log_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    std::fs::write(&path, vec![0xa5; 64 * 1024]).unwrap();
    let error = LogStore::open(dir.path())
        .err()
        .expect("a garbage log file opened");
    assert!(
        error.to_string().contains(&*path.to_string_lossy()),
        "{error}"
    );
}

#[tokio::test]
async fn corrupt_log_entry_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.blocking_append([normal(1, 1, "a"), normal(1, 2, "b")])
            .await
            .unwrap();
    }
    let path = dir.path().join(LOG_FILE);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let entries: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("entries");
        txn.open_table(entries)
            .unwrap()
            .insert(2, b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let error = LogStore::open(dir.path())
        .err()
        .expect("a log with a corrupt entry opened");
    let message = error.to_string();
    assert!(message.contains(&*path.to_string_lossy()), "{message}");
    assert!(message.contains("log entry 2"), "{message}");
}

/// One master of the test cluster: its Raft node, machine and gRPC server.
struct Master {
    id: NodeId,
    raft: Raft<TypeConfig>,
    machine: Arc<Mutex<Applied>>,
    stop: CancellationToken,
    _dir: TempDir,
}

impl Master {
    async fn start(id: NodeId, listener: TcpListener, config: Arc<Config>) -> Master {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path()).unwrap();
        let machine = machine();
        let sm = StateMachineStore::open(dir.path(), machine.clone()).unwrap();
        let raft = Raft::new(id, config, Network::new(id), log, sm)
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let serve = tonic::transport::Server::builder()
            .add_service(RaftServer::new(raft.clone(), None).into_service())
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(serve);
        Master {
            id,
            raft,
            machine,
            stop,
            _dir: dir,
        }
    }

    fn applied(&self) -> Vec<String> {
        self.machine.lock().unwrap().0.clone()
    }

    async fn wait_applied(&self, index: u64) {
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), format!("node {} applies {index}", self.id))
            .await
            .unwrap();
    }
}

/// The leader by the first master's view, once it names one of `masters` other than `not`.
async fn leader(masters: &[Master], not: Option<NodeId>) -> NodeId {
    let metrics = masters[0]
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                m.current_leader
                    .is_some_and(|l| Some(l) != not && masters.iter().any(|m| m.id == l))
            },
            "a leader is elected",
        )
        .await
        .unwrap();
    metrics.current_leader.unwrap()
}

/// Writes `command` through the leader, following `ForwardToLeader` as a client would (the
/// first elections may race: every node is initialized). Answers who took it, and its index.
async fn write(masters: &[Master], not: Option<NodeId>, command: Command) -> (NodeId, u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut to = leader(masters, not).await;
    loop {
        let master = masters.iter().find(|m| m.id == to).unwrap();
        match master.raft.client_write(command.clone()).await {
            Ok(written) => return (to, written.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))
                if Instant::now() < deadline =>
            {
                to = match forward.leader_id {
                    Some(id) if Some(id) != not && masters.iter().any(|m| m.id == id) => id,
                    _ => leader(masters, not).await,
                };
            }
            Err(e) => panic!("node {to} refuses a write: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_elect_replicate_and_fail_over() {
    let config = Arc::new(
        Config {
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, BasicNode::new(listener.local_addr().unwrap()));
        listeners.push((id, listener));
    }
    let mut masters = Vec::new();
    for (id, listener) in listeners {
        masters.push(Master::start(id, listener, config.clone()).await);
    }
    for master in &masters {
        match master.raft.initialize(members.clone()).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => panic!("node {} does not initialize: {e}", master.id),
        }
    }

    let mut first = 0;
    let mut last = 0;
    for app in ["a", "b", "c"] {
        (first, last) = write(&masters, None, app_removed(app)).await;
    }
    for master in &masters {
        master.wait_applied(last).await;
        assert_eq!(
            master.applied(),
            ["AppRemoved:a", "AppRemoved:b", "AppRemoved:c"],
            "node {}",
            master.id
        );
    }

    // Stop the leader: its server first, so no peer reaches a stopping node, then its Raft.
    let stopped = Instant::now();
    let old = masters.iter().position(|m| m.id == first).unwrap();
    let old = masters.remove(old);
    old.stop.cancel();
    old.raft.shutdown().await.unwrap();

    let (second, index) = write(&masters, Some(first), app_removed("d")).await;
    eprintln!(
        "failover: leader {first} stopped, leader {second} accepted a write after {:?}",
        stopped.elapsed()
    );
    for master in &masters {
        master.wait_applied(index).await;
        assert_eq!(master.applied().last().unwrap(), "AppRemoved:d");
    }
    for master in &masters {
        master.stop.cancel();
        master.raft.shutdown().await.unwrap();
    }
}
