//! TLS on every port, on a real in-process cluster: a shuffle written and read exactly with
//! replication (worker-to-worker TLS), HTTPS admin ports, plaintext and untrusted peers
//! refused with clear errors, and certificates rotated in place reaching new connections while
//! open ones keep working.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, read_records, write_records};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sluice::local::{LocalCluster, LocalOptions};
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::connection::{FrameReader, OutFrame};
use sluice_protocol::frame::{FrameLimits, MessageType};
use sluice_protocol::rpc::RpcClient;
use sluice_protocol::tls::TlsClient;
use sluice_protocol::{pb, ErrorCode, ProtocolError, ShuffleKey};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn tls_cluster(dir: &Path, masters: usize, workers: usize) -> LocalCluster {
    let mut options = LocalOptions::new(workers, dir);
    options.masters = masters;
    options.tls = true;
    options.master.tls_reload_interval = Duration::from_millis(100);
    options.worker.tls_reload_interval = Duration::from_millis(100);
    LocalCluster::start(options).await.unwrap()
}

/// The dialing side trusting the cluster's CA.
fn trusting(cluster: &LocalCluster) -> TlsClient {
    let ca = cluster.tls_ca_file.as_ref().expect("TLS is on");
    TlsClient::load(ca, "localhost", Duration::from_millis(100)).unwrap()
}

/// A probe of a TLS port that is not a shuffle client: it opens a rustls connection itself and
/// returns it, so the test sees the certificate the server presented.
async fn rustls_connect(
    ca_file: &Path,
    addr: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// The leaf certificate `addr` presents to a new connection.
async fn presented(ca_file: &Path, addr: &str, alpn: &[u8]) -> CertificateDer<'static> {
    let stream = rustls_connect(ca_file, addr, alpn).await;
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn leaf_in(cert_file: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cert_file).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tls_everywhere_shuffles_exactly_and_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    // Three masters (Raft between them over TLS), two workers (replicas forwarded over TLS).
    let cluster = tls_cluster(dir.path(), 3, 2).await;
    let ready: serde_json::Value = serde_json::from_str(&cluster.ready_line()).unwrap();
    assert_eq!(ready["tls_server_name"], "localhost");
    assert!(ready["tls_ca_file"].as_str().unwrap().ends_with("ca.pem"));
    assert!(ready["cluster_secret_file"].is_null());

    let client = SluiceClient::new(ClientConfig {
        replication: 2,
        ..cluster.client_config()
    })
    .unwrap();
    let key = ShuffleKey::new("tls-app", 0);
    let ids = write_records(&client, &key, (3, 4), 3000, 900).await;
    let seen: HashMap<_, _> = read_records(&client, &key, 0..4, None).await.unwrap();
    assert_eq!(seen.len(), ids.len());
    assert!(ids.iter().all(|id| seen.get(id) == Some(&1)));
    let handle = client.register_shuffle(&key, 3, 4).await.unwrap();
    assert!(handle
        .locations
        .replica_worker
        .iter()
        .all(|r| (*r as usize) < handle.locations.workers.len()));

    // The admin ports speak HTTPS only.
    let tls = trusting(&cluster);
    for admin in &cluster.master_admins {
        let answer = sluice::http::get_with(admin, "/healthz", Some(&tls))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let leader = eventually("a master admin port naming the workers", TIMEOUT, || {
        let (admins, tls) = (cluster.master_admins.clone(), tls.clone());
        async move {
            for admin in admins {
                let answer = sluice::http::get_with(&admin, "/api/workers", Some(&tls))
                    .await
                    .ok()?;
                if answer.status == 200 {
                    return Some(answer.json());
                }
            }
            None
        }
    })
    .await;
    assert_eq!(leader["workers"].as_array().unwrap().len(), 2, "{leader}");
    for admin in cluster.worker_admins().into_iter().flatten() {
        let answer = sluice::http::get_with(&admin, "/api/config", Some(&tls))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["tls_push"], true);
    }
    let plain = sluice::http::get(&cluster.master_admins[0], "/healthz").await;
    assert!(plain.is_err(), "plain HTTP to an HTTPS port: {plain:?}");
    assert!(cluster.status_page().unwrap().starts_with("https://"));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_untrusted_peers_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tls_cluster(dir.path(), 1, 1).await;
    let worker = &cluster.workers()[0];

    // A plaintext client of the push port: its request fails with the port's refusal.
    let plain = RpcClient::connect(&worker.push_addr(), FrameLimits::default(), TIMEOUT)
        .await
        .unwrap();
    let request = OutFrame::new(MessageType::OpenStream, 0, &pb::OpenStreamHeader::default());
    match plain.call(request, TIMEOUT).await {
        Err(ProtocolError::Remote { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Unauthenticated);
            assert!(message.contains("requires TLS"), "{message}");
        }
        other => panic!("expected the port's refusal, got {other:?}"),
    }

    // The fetch port answers the same, in one Error frame, then closes.
    let mut raw = TcpStream::connect(worker.fetch_addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut reader = FrameReader::new(raw, FrameLimits::default());
    let answer = reader.read_frame().await.unwrap().unwrap();
    assert_eq!((answer.kind, answer.request_id), (MessageType::Error, 0));
    let error: pb::ErrorHeader = answer.decode_header("error").unwrap();
    assert!(error.message.contains("requires TLS"), "{}", error.message);
    assert!(reader.read_frame().await.unwrap_or(None).is_none());

    // A client trusting another CA is refused at the handshake, naming the reason.
    let other = tempfile::tempdir().unwrap();
    let other_ca = sluice::certs::issue(other.path(), &["localhost".into()], &[], None)
        .unwrap()
        .ca;
    let stranger = TlsClient::load(&other_ca, "localhost", TIMEOUT).unwrap();
    let refused = RpcClient::connect_with(
        &worker.push_addr(),
        FrameLimits::default(),
        TIMEOUT,
        None,
        Some(&stranger),
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, ProtocolError::Tls { .. }), "{refused}");
    assert_eq!(refused.code(), ErrorCode::Unauthenticated);
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");

    // So is a shuffle client with that CA, at the master, within its retry time.
    let mut config = cluster.client_config();
    config.tls_ca_file = other_ca.to_string_lossy().into_owned();
    config.master_retry_timeout = Duration::from_millis(500);
    let client = SluiceClient::new(config).unwrap();
    let error = client.cluster_status().await.unwrap_err();
    assert!(
        error.to_string().contains("UnknownIssuer"),
        "the error names the refused certificate: {error}"
    );

    // And a client without TLS at the TLS gRPC port gets no answer.
    let mut config = cluster.client_config();
    config.tls = false;
    config.master_retry_timeout = Duration::from_millis(500);
    assert!(SluiceClient::new(config)
        .unwrap()
        .cluster_status()
        .await
        .is_err());
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tls_cluster(dir.path(), 1, 1).await;
    let tls_dir = dir.path().join("tls");
    let ca = cluster.tls_ca_file.clone().unwrap();
    let worker = cluster.workers()[0].clone();
    let grpc = cluster.masters[0].clone();
    let admin = cluster.master_admins[0].clone();
    let push = worker.push_addr();
    let first = leaf_in(&tls_dir.join("cert.pem"));
    let ports = [
        (grpc.as_str(), b"h2".as_slice()),
        (push.as_str(), b"".as_slice()),
        (admin.as_str(), b"http/1.1".as_slice()),
    ];
    for (addr, alpn) in ports {
        assert_eq!(presented(&ca, addr, alpn).await, first, "{addr}");
    }

    // Connections opened before the rotation.
    let tls = trusting(&cluster);
    let open_push = RpcClient::connect_with(
        &worker.push_addr(),
        FrameLimits::default(),
        TIMEOUT,
        None,
        Some(&tls),
    )
    .await
    .unwrap();
    let open_grpc = cluster.client().unwrap();
    open_grpc.cluster_status().await.unwrap();

    // cert-manager writes a new certificate (same CA, another serial) over the files.
    sluice::certs::issue(
        &tls_dir,
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        Some(4242),
    )
    .unwrap();
    let second = leaf_in(&tls_dir.join("cert.pem"));
    assert_ne!(first, second);
    for (addr, alpn) in ports {
        let (ca, second) = (ca.clone(), second.clone());
        eventually(
            &format!("{addr} presenting the new certificate"),
            TIMEOUT,
            || {
                let (ca, second) = (ca.clone(), second.clone());
                async move { (presented(&ca, addr, alpn).await == second).then_some(()) }
            },
        )
        .await;
    }

    // The connections opened before still work.
    let request = OutFrame::new(MessageType::OpenStream, 0, &pb::OpenStreamHeader::default());
    match open_push.call(request, TIMEOUT).await {
        Err(ProtocolError::Remote { code, .. }) => assert_eq!(code, ErrorCode::InvalidRequest),
        other => panic!("the open push connection should answer, got {other:?}"),
    }
    open_grpc.cluster_status().await.unwrap();
    // New shuffle clients work with the new certificate end to end.
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("rotated", 0);
    let ids = write_records(&client, &key, (1, 2), 200, 300).await;
    let seen = read_records(&client, &key, 0..2, None).await.unwrap();
    assert_eq!(seen.len(), ids.len());
    cluster.shutdown().await.unwrap();
}
