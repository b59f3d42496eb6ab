//! Cluster identity on the data plane, on a real in-process cluster whose master and workers
//! share a cluster secret file.

mod common;

use common::app_credentials;

use std::sync::Arc;
use std::time::Duration;

use sluice::local::{LocalCluster, LocalOptions};
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::auth::{Keyring, Principal, Secret};
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
    secure_cluster_with(dir, workers, false).await
}

async fn secure_cluster_with(
    dir: &std::path::Path,
    workers: usize,
    admin: bool,
) -> (LocalCluster, Arc<Keyring>) {
    let secret_file = dir.join("cluster-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let path = secret_file.display().to_string();
    let mut options = LocalOptions::new(workers, dir.join("data"));
    options.admin = admin;
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

/// A client of `cluster` holding application secret `secret`, writing `replication` copies.
fn app_client(cluster: &LocalCluster, secret: &str, replication: u32) -> SluiceClient {
    SluiceClient::new(ClientConfig {
        replication,
        app_secret: Some(Secret::new(secret.as_bytes().to_vec())),
        ..ClientConfig::new(cluster.master_addr.clone())
    })
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
    let client = app_client(&cluster, "app-1-secret", 0);
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
    let client = app_client(&cluster, "app-r-secret", 2);
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

// Applications: each authenticates with its own secret and touches only its own shuffles.

async fn master_client(
    master: &str,
) -> sluice_protocol::pb::master_client::MasterClient<tonic::transport::Channel> {
    sluice_protocol::master_channel::master_client(master, &Default::default()).unwrap()
}

fn signed<T: sluice_protocol::auth::SignedRequest>(
    credentials: &Credentials,
    message: T,
) -> tonic::Request<T> {
    sluice_protocol::auth::sign(&credentials.principal, &credentials.keys, message).unwrap()
}

/// The status of a refused gRPC call.
fn refusal<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    match result {
        Err(status) => status,
        Ok(answer) => panic!("expected a refusal, got {answer:?}"),
    }
}

fn location(key: &ShuffleKey) -> pb::LocationRef {
    pb::LocationRef {
        shuffle: Some(key.to_pb()),
        partition: 0,
        epoch: 0,
        role: pb::Role::Primary as i32,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_write_and_read_with_their_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = secure_cluster_of(dir.path(), 2).await;
    let client = app_client(&cluster, "the secret of app-w", 2);
    let key = ShuffleKey::new("app-w", 3);
    let ids = common::write_records(&client, &key, (3, 4), 500, 300).await;
    let seen = common::read_records(&client, &key, 0..4, None)
        .await
        .unwrap();
    assert_eq!(seen.len(), ids.len());
    assert!(seen.values().all(|&n| n == 1), "every record exactly once");
    client.unregister_shuffle(&key).await.unwrap();
    client.app_heartbeat("app-w").await.unwrap();

    // The client is bound to its application.
    let other = client
        .register_shuffle(&ShuffleKey::new("app-x", 0), 1, 1)
        .await
        .unwrap_err();
    assert!(
        other
            .to_string()
            .contains("authenticates as application app-w"),
        "{other}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_a_is_refused_on_every_operation_of_app_b() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = secure_cluster_with(dir.path(), 1, true).await;
    let master = cluster.master_addr.clone();
    // Application B writes a shuffle.
    let b = app_client(&cluster, "secret of B", 1);
    let key = ShuffleKey::new("app-b", 0);
    let ids = common::write_records(&b, &key, (2, 1), 200, 100).await;

    // Application A holds valid credentials of its own.
    let a = app_credentials(&master, "app-a", "secret of A").await;
    let mut client = master_client(&master).await;
    let shuffle = Some(key.to_pb());
    let mut refusals = vec![
        (
            "RegisterShuffle",
            refusal(
                client
                    .register_shuffle(signed(
                        &a,
                        pb::RegisterShuffleRequest {
                            shuffle: Some(ShuffleKey::new("app-b", 1).to_pb()),
                            num_maps: 1,
                            num_partitions: 1,
                            replication: 1,
                        },
                    ))
                    .await,
            ),
        ),
        (
            "Revive",
            refusal(
                client
                    .revive(signed(
                        &a,
                        pb::ReviveRequest {
                            shuffle: shuffle.clone(),
                            failed: vec![],
                            reason: "forged".into(),
                        },
                    ))
                    .await,
            ),
        ),
        (
            "MapperEnd",
            refusal(
                client
                    .mapper_end(signed(
                        &a,
                        pb::MapperEndRequest {
                            shuffle: shuffle.clone(),
                            map_id: 0,
                            attempt: 9,
                            partitions: vec![],
                        },
                    ))
                    .await,
            ),
        ),
        (
            "GetShuffleLayout",
            refusal(
                client
                    .get_shuffle_layout(signed(
                        &a,
                        pb::GetShuffleLayoutRequest {
                            shuffle: shuffle.clone(),
                            start_partition: 0,
                            end_partition: 1,
                            wait_ms: 0,
                        },
                    ))
                    .await,
            ),
        ),
        (
            "UnregisterShuffle",
            refusal(
                client
                    .unregister_shuffle(signed(
                        &a,
                        pb::UnregisterShuffleRequest {
                            shuffle: shuffle.clone(),
                        },
                    ))
                    .await,
            ),
        ),
        (
            "AppHeartbeat",
            refusal(
                client
                    .app_heartbeat(signed(
                        &a,
                        pb::AppHeartbeatRequest {
                            app_id: "app-b".into(),
                        },
                    ))
                    .await,
            ),
        ),
        (
            "RegisterWorker",
            refusal(
                client
                    .register_worker(signed(
                        &a,
                        pb::RegisterWorkerRequest {
                            worker: Some(cluster.workers()[0].clone()),
                            ..Default::default()
                        },
                    ))
                    .await,
            ),
        ),
    ];
    for (rpc, status) in &refusals {
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{rpc}: {status:?}"
        );
        assert!(
            status.message().contains("app:app-a"),
            "{rpc}: {}",
            status.message()
        );
    }
    // Registering B's id with A's secret.
    let secret_a = Secret::new(b"secret of A".to_vec());
    let taken = refusal(
        client
            .register_application(pb::RegisterApplicationRequest {
                app_id: "app-b".into(),
                verifier: sluice_protocol::auth::verifier(&sluice_protocol::auth::app_key(
                    &secret_a, "app-b",
                ))
                .to_vec(),
            })
            .await,
    );
    assert_eq!(taken.code(), tonic::Code::Unauthenticated);
    assert!(
        taken.message().contains("registered with another secret"),
        "{}",
        taken.message()
    );
    refusals.clear();

    // The data plane: A's sessions on B's locations.
    let info = &cluster.workers()[0];
    let push_port = format!("{}:{}", info.host, info.push_port);
    let fetch_port = format!("{}:{}", info.host, info.fetch_port);
    let pushes = RpcClient::connect_as(&push_port, FrameLimits::default(), TIMEOUT, Some(&a))
        .await
        .unwrap();
    for frame in [push(&key), {
        let mut merged = push(&key);
        merged.kind = MessageType::PushMergedData;
        merged
    }] {
        let kind = frame.kind;
        let denied = pushes.call(frame, TIMEOUT).await;
        match denied {
            Err(ProtocolError::Remote { code, message, .. }) => {
                assert_eq!(code, ErrorCode::PermissionDenied, "{kind:?}: {message}");
                assert!(
                    message.contains("app:app-a") && message.contains("app-b"),
                    "{message}"
                );
            }
            other => panic!("{kind:?}: {other:?}"),
        }
    }
    let fetches = RpcClient::connect_as(&fetch_port, FrameLimits::default(), TIMEOUT, Some(&a))
        .await
        .unwrap();
    let open = OutFrame::new(
        MessageType::OpenStream,
        0,
        &pb::OpenStreamHeader {
            location: Some(location(&key)),
            start_map: 0,
            end_map: None,
            index_offset: 0,
        },
    );
    let chunk = OutFrame::new(
        MessageType::FetchChunk,
        0,
        &pb::FetchChunkHeader {
            location: Some(location(&key)),
            chunk: Some(pb::Chunk::default()),
        },
    );
    for frame in [open, chunk] {
        let kind = frame.kind;
        assert_eq!(
            remote_code(fetches.call(frame, TIMEOUT).await),
            ErrorCode::PermissionDenied,
            "{kind:?}"
        );
    }

    // An unsigned call, and every refusal so far, is counted on the master.
    let unsigned = refusal(
        client
            .app_heartbeat(pb::AppHeartbeatRequest {
                app_id: "app-b".into(),
            })
            .await,
    );
    assert_eq!(unsigned.code(), tonic::Code::Unauthenticated);
    let (_, metrics) = common::get(&cluster.master_admins[0], "/metrics").await;
    assert!(
        common::metric_sum(&metrics, "sluice_master_auth_refused_total", "") >= 9.0,
        "{metrics}"
    );

    // Every refusal of the data plane was counted on the worker.
    let admin = cluster.worker_admins()[0].clone().unwrap();
    let (_, metrics) = common::get(&admin, "/metrics").await;
    assert!(
        common::metric_sum(&metrics, "sluice_worker_auth_refused_total", "permission") >= 4.0,
        "{metrics}"
    );

    // B's shuffle is whole: every record exactly once.
    let seen = common::read_records(&b, &key, 0..1, None).await.unwrap();
    assert_eq!(seen.len(), ids.len());
    assert!(seen.values().all(|&n| n == 1));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_application_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = secure_cluster(dir.path()).await;
    let owner = app_client(&cluster, "the owner's secret", 1);
    let key = ShuffleKey::new("app-o", 0);
    owner.register_shuffle(&key, 1, 1).await.unwrap();

    // No secret at all: the master asks for one.
    let anonymous = cluster.client().unwrap();
    let error = anonymous.register_shuffle(&key, 1, 1).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Unauthenticated, "{error}");
    assert!(
        error.to_string().contains("requires authentication"),
        "{error}"
    );
    let error = common::read_records(&anonymous, &key, 0..1, None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::Unauthenticated, "{error}");

    // Another secret for the same application id.
    let impostor = app_client(&cluster, "a guessed secret", 1);
    let error = impostor.unregister_shuffle(&key).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Unauthenticated, "{error}");
    assert!(
        error.to_string().contains("registered with another secret"),
        "{error}"
    );

    // No session on a worker port without credentials either.
    let info = &cluster.workers()[0];
    let plain = RpcClient::connect(
        &format!("{}:{}", info.host, info.push_port),
        FrameLimits::default(),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        remote_code(plain.call(push(&key), TIMEOUT).await),
        ErrorCode::Unauthenticated
    );

    // The owner's shuffle is still there.
    owner.unregister_shuffle(&key).await.unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_requests_and_frames_are_refused() {
    use sluice_protocol::auth::client_handshake;
    use sluice_protocol::connection::FrameWriter;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = secure_cluster(dir.path()).await;
    let master = cluster.master_addr.clone();
    let creds = app_credentials(&master, "app-r", "secret of R").await;
    let mut client = master_client(&master).await;

    // A signed gRPC request sent twice: the second is a replay.
    let key = ShuffleKey::new("app-r", 0);
    let request = signed(
        &creds,
        pb::RegisterShuffleRequest {
            shuffle: Some(key.to_pb()),
            num_maps: 1,
            num_partitions: 1,
            replication: 1,
        },
    );
    let copy = {
        let mut copy = tonic::Request::new(request.get_ref().clone());
        *copy.metadata_mut() = request.metadata().clone();
        copy
    };
    client.register_shuffle(request).await.unwrap();
    let replayed = refusal(client.register_shuffle(copy).await);
    assert_eq!(replayed.code(), tonic::Code::Unauthenticated);
    assert!(
        replayed.message().contains("replay"),
        "{}",
        replayed.message()
    );

    // A tagged push recorded on one connection, replayed on another: its tag was made for the
    // first session (both nonces and its sequence number), so the second connection closes.
    let info = &cluster.workers()[0];
    let addr = format!("{}:{}", info.host, info.push_port);
    let session = |stream: tokio::net::TcpStream| {
        let creds = creds.clone();
        async move {
            let (read, write) = stream.into_split();
            let mut reader = FrameReader::new(read, FrameLimits::default());
            let mut writer = FrameWriter::new(write);
            let (sealer, opener) =
                client_handshake(&mut reader, &mut writer, &creds.principal, &creds.keys)
                    .await
                    .unwrap();
            reader.set_opener(opener);
            (reader, writer.into_inner(), sealer)
        }
    };
    let (mut reader, mut writer, sealer) =
        session(tokio::net::TcpStream::connect(&addr).await.unwrap()).await;
    let mut recorder = FrameWriter::new(Vec::new());
    recorder.set_sealer(sealer);
    let mut frame = push(&key);
    frame.request_id = 7;
    recorder.write_frame(&frame).await.unwrap();
    recorder.flush().await.unwrap();
    let captured = recorder.get_ref().clone();
    writer.write_all(&captured).await.unwrap();
    let answer = reader.read_frame().await.unwrap().unwrap();
    assert_eq!((answer.kind, answer.request_id), (MessageType::Ack, 7));

    let (mut reader, mut writer, _) =
        session(tokio::net::TcpStream::connect(&addr).await.unwrap()).await;
    writer.write_all(&captured).await.unwrap();
    let answer = tokio::time::timeout(TIMEOUT, reader.read_frame())
        .await
        .unwrap();
    assert!(
        !matches!(&answer, Ok(Some(frame)) if frame.kind == MessageType::Ack),
        "a replayed push was acked: {answer:?}"
    );
    cluster.shutdown().await.unwrap();
}

/// `POST path` on `addr` with `headers`: the status code and the body.
async fn post(addr: &str, path: &str, headers: &[(&str, String)]) -> (u16, String) {
    common::http(addr, "POST", path, headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_need_the_cluster_secret() {
    use sluice_protocol::auth::{sign_raw, PrincipalKeys, AUTH_METADATA};
    let dir = tempfile::tempdir().unwrap();
    let (cluster, keyring) = secure_cluster_with(dir.path(), 1, true).await;
    let worker = cluster.worker_admins()[0].clone().unwrap();
    let master = cluster.master_admins[0].clone();
    let app = app_credentials(&cluster.master_addr, "app-adm", "secret of adm").await;
    let operator = PrincipalKeys::cluster(keyring.signing());
    let sign = |principal: &Principal, keys: &PrincipalKeys, path: &str| {
        vec![(
            AUTH_METADATA,
            sign_raw(principal, keys, &format!("POST {path}"), b"").unwrap(),
        )]
    };
    let worker_id = &cluster.workers()[0].id;
    let on_master = format!("/api/workers/{worker_id}/decommission");
    for (addr, path) in [
        (&worker, "/api/decommission"),
        (&master, on_master.as_str()),
    ] {
        let (status, answer) = post(addr, path, &[]).await;
        assert_eq!(status, 401, "{answer}");
        assert!(answer.contains("--cluster-secret-file"), "{answer}");
        let (status, answer) = post(addr, path, &sign(&app.principal, &app.keys, path)).await;
        assert_eq!(status, 403, "{answer}");
        // A signature made for another path does not verify.
        let (status, answer) = post(
            addr,
            path,
            &sign(&Principal::Admin, &operator, "/api/other"),
        )
        .await;
        assert_eq!(status, 401, "{answer}");
    }
    // Nothing changed: the worker still serves and is ready.
    let (status, _) = common::get(&worker, "/readyz").await;
    assert_eq!(status, 200);
    // Reads stay open; the config shows the secret's path, never a secret.
    let (status, config) = common::get(&worker, "/api/config").await;
    assert_eq!(status, 200);
    assert!(!config.contains(SECRET.trim()), "{config}");
    let (status, apps) = common::get(&master, "/api/apps").await;
    assert_eq!(status, 200);
    assert!(apps.contains("app-adm"), "{apps}");

    let path = "/api/decommission";
    let (status, answer) = post(&worker, path, &sign(&Principal::Admin, &operator, path)).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = common::get(&worker, "/readyz").await;
    assert_eq!(status, 503);
    cluster.shutdown().await.unwrap();
}

#[test]
fn the_bench_compares_every_security_configuration_and_verifies_each() {
    let report = common::bench_report(&[
        "--security-overhead",
        "1",
        "--workers",
        "2",
        "--maps",
        "2",
        "--partitions",
        "4",
        "--bytes-per-map",
        "512KiB",
        "--verify",
        "--loopback-bytes",
        "0",
    ]);
    let overhead = &report["security_overhead"];
    let names: Vec<&str> = overhead["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plain", "auth", "tls", "auth+tls"], "{report}");
    for config in overhead["configs"].as_array().unwrap() {
        assert!(config["write_gbps"].as_f64().unwrap() > 0.0, "{config}");
        assert!(config["read_gbps"].as_f64().unwrap() > 0.0, "{config}");
    }
    assert_eq!(overhead["lost"], 0, "{report}");
    assert_eq!(overhead["duplicated"], 0, "{report}");
    assert_eq!(overhead["corrupted"], 0, "{report}");
}

/// Runs `sluice` with `args` to its end: whether it succeeded, its stdout and stderr.
fn run_sluice(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn sluice_admin_signs_changes_on_a_secure_local_cluster() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("local.log");
    let mut local = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["local", "--secure", "--workers", "1", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(local.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
        let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
        let (secret, ca, name) = (
            text(&ready["cluster_secret_file"]),
            text(&ready["tls_ca_file"]),
            text(&ready["tls_server_name"]),
        );
        let master_admin = text(&ready["admin"][0]);
        let worker = &ready["workers"][0];
        let (worker_id, worker_admin) = (text(&worker["id"]), text(&worker["admin"]));
        let tls = ["--tls-ca-file", &ca, "--tls-server-name", &name];

        // Reads need TLS only.
        let (ok, out, err) = run_sluice(
            &[
                &["admin"][..],
                &tls,
                &["workers", "--master", &master_admin],
            ]
            .concat(),
        );
        assert!(ok && out.contains(&worker_id), "{out}\n{err}");
        // A change without the secret is refused, and nothing changes.
        let (ok, _, err) = run_sluice(
            &[
                &["admin"][..],
                &tls,
                &["decommission", "--worker", &worker_admin],
            ]
            .concat(),
        );
        assert!(!ok && err.contains("--cluster-secret-file"), "{err}");
        let (ok, out, err) = run_sluice(
            &[
                &["admin"][..],
                &tls,
                &["masters", "--master", &text(&ready["master"])],
            ]
            .concat(),
        );
        assert!(ok, "{out}\n{err}");
        // With it the worker decommissions.
        let signed = [&["admin", "--cluster-secret-file", &secret][..], &tls].concat();
        let (ok, out, err) = run_sluice(
            &[
                &signed[..],
                &["decommission", &worker_id, "--master", &master_admin],
            ]
            .concat(),
        );
        assert!(ok && out.contains("decommissioning"), "{out}\n{err}");
        let (ok, out, err) = run_sluice(
            &[
                &signed[..],
                &["masters", "--master", &text(&ready["master"])],
            ]
            .concat(),
        );
        assert!(ok && out.contains("leader"), "{out}\n{err}");
        secret
    });
    let _ = local.kill();
    let _ = local.wait();
    let secret = match result {
        Ok(secret) => secret,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    // The secret never reaches a log, even at debug level.
    let secret = std::fs::read_to_string(&secret).unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("DEBUG"), "the log is at debug level");
    for line in secret.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            !log.contains(line.trim()),
            "the cluster secret is in the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_application_holds_at_most_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cluster-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let path = secret_file.display().to_string();
    let mut options = LocalOptions::new(1, dir.path().join("data"));
    options.admin = false;
    options.master.cluster_secret_file = path.clone();
    options.worker.cluster_secret_file = path;
    options.worker.max_connections_per_app = 2;
    let cluster = LocalCluster::start(options).await.unwrap();
    let greedy = app_credentials(&cluster.master_addr, "app-greedy", "greedy").await;
    let other = app_credentials(&cluster.master_addr, "app-other", "other").await;
    let addr = push_addr(&cluster);
    let key = ShuffleKey::new("app-greedy", 0);
    let connect = |credentials: &Credentials| {
        let credentials = credentials.clone();
        let addr = addr.clone();
        async move {
            RpcClient::connect_as(&addr, FrameLimits::default(), TIMEOUT, Some(&credentials))
                .await
                .unwrap()
        }
    };
    let first = connect(&greedy).await;
    let second = connect(&greedy).await;
    for client in [&first, &second] {
        // Served: the location does not exist, which is an answer.
        assert_eq!(
            remote_code(client.call(push(&key), TIMEOUT).await),
            ErrorCode::NotFound
        );
    }
    let third = connect(&greedy).await;
    match third.call(push(&key), TIMEOUT).await {
        Err(ProtocolError::Remote { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Busy, "{message}");
            assert!(message.contains("max_connections_per_app"), "{message}");
        }
        Err(ProtocolError::Closed { .. }) => {}
        other => panic!("a third connection was served: {other:?}"),
    }
    // Another application is not held back, and a place freed is taken again.
    let theirs = connect(&other).await;
    let their_key = ShuffleKey::new("app-other", 0);
    assert_eq!(
        remote_code(theirs.call(push(&their_key), TIMEOUT).await),
        ErrorCode::NotFound
    );
    drop(first);
    let again = common::eventually("a freed place", TIMEOUT, || {
        let connect = connect(&greedy);
        let key = key.clone();
        async move {
            let client = connect.await;
            match client.call(push(&key), TIMEOUT).await {
                Err(ProtocolError::Remote {
                    code: ErrorCode::NotFound,
                    ..
                }) => Some(client),
                _ => None,
            }
        }
    })
    .await;
    drop((second, again));
    cluster.shutdown().await.unwrap();
}

/// The review's reproduction, and its cousins: a peer that is not the master sends a worker
/// `Reserve` (redirecting a primary's replica to a listener of its own), `Commit` and `Destroy`,
/// over plain TCP, as another application and as the victim application itself. Every one is
/// refused; the victim's shuffle is then written and read back exactly, and the listener never
/// sees a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_control_frames_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, keyring) = secure_cluster_of(dir.path(), 3).await;
    let victim = app_client(&cluster, "the victim's secret", 2);
    let key = ShuffleKey::new("app-victim", 0);
    let handle = victim.register_shuffle(&key, 2, 2).await.unwrap();
    let locations = &handle.locations;
    let worker = |index: u32| {
        let info = &locations.workers[index as usize];
        format!("{}:{}", info.host, info.push_port)
    };
    let primary = worker(locations.primary_worker[0]);
    let fetch = {
        let info = &locations.workers[locations.primary_worker[0] as usize];
        format!("{}:{}", info.host, info.fetch_port)
    };

    let thief = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_port = thief.local_addr().unwrap().port();
    let redirect = {
        let header = pb::ReserveHeader {
            shuffle: Some(key.to_pb()),
            locations: vec![pb::LocationSpec {
                partition: 0,
                epoch: 0,
                role: pb::Role::Primary as i32,
                replica: Some(pb::WorkerInfo {
                    id: "thief".into(),
                    host: "127.0.0.1".into(),
                    push_port: u32::from(thief_port),
                    fetch_port: u32::from(thief_port),
                    ..Default::default()
                }),
            }],
        };
        OutFrame::new(MessageType::Reserve, 0, &header)
    };
    let commit = OutFrame::new(
        MessageType::Commit,
        0,
        &pb::CommitHeader {
            shuffle: Some(key.to_pb()),
            locations: vec![pb::LocationSpec {
                partition: 0,
                epoch: 0,
                role: pb::Role::Primary as i32,
                replica: None,
            }],
        },
    );
    let destroy = OutFrame::new(
        MessageType::Destroy,
        0,
        &pb::DestroyHeader {
            app_id: "app-victim".into(),
            shuffle_id: None,
        },
    );
    let forged = [redirect, commit, destroy];

    // Plain TCP, no session: refused before anything is read.
    for frame in &forged {
        let plain = RpcClient::connect(&primary, FrameLimits::default(), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            remote_code(plain.call(frame.clone(), TIMEOUT).await),
            ErrorCode::Unauthenticated,
            "{:?}",
            frame.kind
        );
    }
    // Sessions of another application, of the victim itself, and of a worker: no control.
    let other = app_credentials(&cluster.master_addr, "app-other", "other").await;
    let own = app_credentials(&cluster.master_addr, "app-victim", "the victim's secret").await;
    let as_worker = Credentials::cluster(Principal::Worker("w-x".into()), &keyring);
    for credentials in [&other, &own, &as_worker] {
        for port in [&primary, &fetch] {
            let session =
                RpcClient::connect_as(port, FrameLimits::default(), TIMEOUT, Some(credentials))
                    .await
                    .unwrap();
            for frame in &forged {
                let answer = session.call(frame.clone(), TIMEOUT).await;
                let code = remote_code(answer);
                assert!(
                    matches!(
                        code,
                        ErrorCode::PermissionDenied | ErrorCode::InvalidRequest
                    ),
                    "{} on {port}: {:?} answered {code:?}",
                    credentials.principal,
                    frame.kind
                );
            }
        }
    }

    // The victim's shuffle is untouched: not sealed, not destroyed, its replica where the
    // master put it.
    let mut ids = Vec::new();
    for map in 0..2 {
        let mut writer = victim.writer(handle.clone(), map, 0).unwrap();
        let mut record = Vec::new();
        for seq in 0..300 {
            record.clear();
            sluice::records::encode(&mut record, map, seq, 120);
            writer.write(seq % 2, &record).await.unwrap();
            ids.push(sluice::records::RecordId { map, seq });
        }
        writer.finish().await.unwrap();
    }
    let seen = common::read_records(&victim, &key, 0..2, None)
        .await
        .unwrap();
    assert_eq!(seen.len(), ids.len());
    assert!(seen.values().all(|&n| n == 1));
    let stolen = tokio::time::timeout(Duration::from_millis(200), thief.accept()).await;
    assert!(stolen.is_err(), "the thief's listener got a connection");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_holder_of_the_secret_registers_a_worker_id() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, keyring) = secure_cluster(dir.path()).await;
    let real = cluster.workers()[0].clone();
    let fake = pb::WorkerInfo {
        push_port: 1,
        fetch_port: 2,
        ..real.clone()
    };
    let register = || pb::RegisterWorkerRequest {
        worker: Some(fake.clone()),
        heartbeat_interval_ms: 1000,
        ..Default::default()
    };
    let mut master = master_client(&cluster.master_addr).await;
    // Unsigned, and signed with another cluster secret.
    let unsigned = refusal(master.register_worker(register()).await);
    assert_eq!(
        unsigned.code(),
        tonic::Code::Unauthenticated,
        "{unsigned:?}"
    );
    let other = Keyring::parse("other", b"another-secret-another-secret-another-secret").unwrap();
    let forged = Credentials::cluster(Principal::Worker(real.id.clone()), &other);
    let wrong = refusal(master.register_worker(signed(&forged, register())).await);
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    // Signed with the secret, but as another worker.
    let neighbour = Credentials::cluster(Principal::Worker("worker-9".into()), &keyring);
    let denied = refusal(master.register_worker(signed(&neighbour, register())).await);
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // Placements still name the real worker's ports.
    let client = app_client(&cluster, "secret of app-p", 1);
    let handle = client
        .register_shuffle(&ShuffleKey::new("app-p", 0), 1, 4)
        .await
        .unwrap();
    assert!(handle
        .locations
        .workers
        .iter()
        .all(|w| w.push_port == real.push_port && w.fetch_port == real.fetch_port));
    cluster.shutdown().await.unwrap();
}
