//! Cluster identity on the data plane, on a real in-process cluster whose master and workers
//! share a cluster secret file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sluice::local::{LocalCluster, LocalOptions};
use sluice_protocol::auth::{Keyring, Principal};
use sluice_protocol::connection::{FrameReader, OutFrame};
use sluice_protocol::frame::{self, FrameLimits, MessageType};
use sluice_protocol::rpc::{Credentials, RpcClient};
use sluice_protocol::{pb, ErrorCode, ProtocolError, ShuffleKey};
use tokio::io::AsyncWriteExt;

const SECRET: &str = "security-test-secret-security-test-secret\n";
const TIMEOUT: Duration = Duration::from_secs(10);

async fn secure_cluster(dir: &std::path::Path) -> (LocalCluster, Arc<Keyring>) {
    secure_cluster_of(dir, 1).await
}

async fn secure_cluster_of(dir: &std::path::Path, workers: usize) -> (LocalCluster, Arc<Keyring>) {
    let secret_file = dir.join("cluster-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let path = secret_file.display().to_string();
    let mut options = LocalOptions::new(workers, dir.join("data"));
    options.admin = false;
    options.master.cluster_secret_file = path.clone();
    options.worker.cluster_secret_file = path;
    let cluster = LocalCluster::start(options).await.unwrap();
    (cluster, Arc::new(Keyring::load(&secret_file).unwrap()))
}

fn push_addr(cluster: &LocalCluster) -> String {
    let worker = &cluster.workers()[0];
    format!("{}:{}", worker.host, worker.push_port)
}

fn reserve(key: &ShuffleKey) -> OutFrame {
    let header = pb::ReserveHeader {
        shuffle: Some(key.to_pb()),
        locations: vec![pb::LocationSpec {
            partition: 0,
            epoch: 0,
            role: pb::Role::Primary as i32,
            replica: None,
        }],
    };
    OutFrame::new(MessageType::Reserve, 0, &header)
}

fn push(key: &ShuffleKey) -> OutFrame {
    push_as(key, pb::Role::Primary)
}

fn push_as(key: &ShuffleKey, role: pb::Role) -> OutFrame {
    let batch = common::record_batch(0, 0, 0, 0..10);
    let header = pb::PushHeader {
        shuffle: Some(key.to_pb()),
        slices: vec![pb::PushSlice {
            partition: 0,
            epoch: 0,
            length: batch.len() as u32,
        }],
        role: role as i32,
    };
    OutFrame::new(MessageType::PushData, 0, &header).with_body(vec![batch])
}

async fn connect_as(addr: &str, principal: Principal, keyring: &Arc<Keyring>) -> RpcClient {
    let credentials = Credentials::cluster(principal, keyring);
    RpcClient::connect_as(addr, FrameLimits::default(), TIMEOUT, Some(&credentials))
        .await
        .unwrap()
}

fn remote_code(result: Result<frame::Frame, ProtocolError>) -> ErrorCode {
    match result {
        Err(ProtocolError::Remote { code, .. }) => code,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_master_session_may_reserve_on_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, keyring) = secure_cluster(dir.path()).await;
    let addr = push_addr(&cluster);
    let key = ShuffleKey::new("forged-app", 0);

    // A raw client without the handshake: its forged Reserve is refused, then the connection
    // is closed.
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut forged = reserve(&key);
    forged.request_id = 42;
    let head = frame::head_for(forged.kind, 42, &forged.header, &[], true).unwrap();
    let bytes = frame::encode_head_to_vec(&head, None, &forged.header, &[]);
    write.write_all(&bytes).await.unwrap();
    let mut reader = FrameReader::new(read, FrameLimits::default());
    let answer = reader.read_frame().await.unwrap().unwrap();
    assert_eq!((answer.kind, answer.request_id), (MessageType::Error, 42));
    let error: pb::ErrorHeader = answer.decode_header("error").unwrap();
    assert_eq!(
        ErrorCode::from_u32(error.code),
        ErrorCode::Unauthenticated,
        "{}",
        error.message
    );
    assert!(reader.read_frame().await.unwrap_or(None).is_none());

    // A worker's session may push but not reserve.
    let as_worker = connect_as(&addr, Principal::Worker("w-x".into()), &keyring).await;
    let denied = as_worker.call(reserve(&key), TIMEOUT).await;
    assert_eq!(remote_code(denied), ErrorCode::PermissionDenied);

    // The worker's state is unchanged: nothing was reserved, so a push finds no location.
    let missing = as_worker.call(push(&key), TIMEOUT).await;
    assert_eq!(remote_code(missing), ErrorCode::NotFound);

    // A master's session reserves, and the push then lands.
    let as_master = connect_as(&addr, Principal::Master("0".into()), &keyring).await;
    as_master
        .call_expecting(reserve(&key), MessageType::Ack, TIMEOUT)
        .await
        .unwrap();
    as_worker
        .call_expecting(push(&key), MessageType::Ack, TIMEOUT)
        .await
        .unwrap();

    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_another_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = secure_cluster(dir.path()).await;
    let other =
        Arc::new(Keyring::parse("other", b"another-secret-another-secret-another-secret").unwrap());
    let credentials = Credentials::cluster(Principal::Master("0".into()), &other);
    let refused = RpcClient::connect_as(
        &push_addr(&cluster),
        FrameLimits::default(),
        TIMEOUT,
        Some(&credentials),
    )
    .await;
    match refused {
        Err(e @ ProtocolError::Auth { .. }) => assert_eq!(e.code(), ErrorCode::Unauthenticated),
        other => panic!("{other:?}"),
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_reserves_through_its_session_when_a_shuffle_registers() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = secure_cluster(dir.path()).await;
    // Registering a shuffle makes the master reserve its locations on the worker over an
    // authenticated connection; with a wrong or missing master session this fails.
    let client = cluster.client().unwrap();
    client
        .register_shuffle(&ShuffleKey::new("app-1", 0), 2, 4)
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_forwards_to_its_replica_over_a_worker_session() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, keyring) = secure_cluster_of(dir.path(), 2).await;
    let client = sluice_client::SluiceClient::new(sluice_client::ClientConfig {
        replication: 2,
        ..sluice_client::ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let key = ShuffleKey::new("app-r", 0);
    let handle = client.register_shuffle(&key, 1, 1).await.unwrap();
    let locations = &handle.locations;
    let worker = |index: u32| {
        let info = &locations.workers[index as usize];
        format!("{}:{}", info.host, info.push_port)
    };
    let (primary, replica) = (
        worker(locations.primary_worker[0]),
        worker(locations.replica_worker[0]),
    );
    assert_ne!(primary, replica);

    // The primary acks only once its replica took the forward, which it sends over a session
    // of its own as worker:<id>.
    let as_worker = connect_as(&primary, Principal::Worker("w-x".into()), &keyring).await;
    as_worker
        .call_expecting(push(&key), MessageType::Ack, TIMEOUT)
        .await
        .unwrap();

    // A master session may not push to a replica location.
    let as_master = connect_as(&replica, Principal::Master("0".into()), &keyring).await;
    let denied = as_master
        .call(push_as(&key, pb::Role::Replica), TIMEOUT)
        .await;
    assert_eq!(remote_code(denied), ErrorCode::PermissionDenied);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_port_requires_a_session_too() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, keyring) = secure_cluster(dir.path()).await;
    let info = &cluster.workers()[0];
    let addr = format!("{}:{}", info.host, info.fetch_port);
    let open = |key: &ShuffleKey| {
        let header = pb::OpenStreamHeader {
            location: Some(pb::LocationRef {
                shuffle: Some(key.to_pb()),
                partition: 0,
                epoch: 0,
                role: pb::Role::Primary as i32,
            }),
            start_map: 0,
            end_map: None,
            index_offset: 0,
        };
        OutFrame::new(MessageType::OpenStream, 0, &header)
    };
    let key = ShuffleKey::new("app-f", 0);

    let plain = RpcClient::connect(&addr, FrameLimits::default(), TIMEOUT)
        .await
        .unwrap();
    let refused = plain.call(open(&key), TIMEOUT).await;
    assert_eq!(remote_code(refused), ErrorCode::Unauthenticated);

    // With a session the request is served (the location does not exist).
    let as_worker = connect_as(&addr, Principal::Worker("w-x".into()), &keyring).await;
    let served = as_worker.call(open(&key), TIMEOUT).await;
    assert_eq!(remote_code(served), ErrorCode::NotFound);
    cluster.shutdown().await.unwrap();
}
