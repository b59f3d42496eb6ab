//! The data-plane handshake over a real loopback TCP connection.

use bytes::Bytes;
use sluice_protocol::auth::{
    client_handshake, server_handshake, AuthError, Keyring, Principal, PrincipalKeys,
    MAX_HELLO_HEADER,
};
use sluice_protocol::connection::{FrameReader, FrameWriter, OutFrame, ReadError};
use sluice_protocol::frame::{FrameLimits, MessageType};
use sluice_protocol::{pb, ErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "a-cluster-secret-a-cluster-secret-a-cluster";
const OTHER: &str = "another-secret-another-secret-another-secret";

type Reader = FrameReader<OwnedReadHalf>;
type Writer = FrameWriter<OwnedWriteHalf>;

fn keyring(secret: &str) -> Keyring {
    Keyring::parse("test", secret.as_bytes()).unwrap()
}

fn ends(stream: TcpStream) -> (Reader, Writer) {
    let (read, write) = stream.into_split();
    (
        FrameReader::new(read, FrameLimits::default()),
        FrameWriter::new(write),
    )
}

/// A connected loopback pair: (client, server).
async fn pair() -> ((Reader, Writer), (Reader, Writer)) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (ends(client.unwrap()), ends(accepted.unwrap().0))
}

fn master() -> Principal {
    Principal::Master("1".into())
}

fn ping(id: u64) -> OutFrame {
    OutFrame::new(MessageType::Ack, id, &pb::Ack {}).with_body(vec![Bytes::from_static(b"ping")])
}

#[tokio::test]
async fn a_good_secret_opens_a_session_and_tagged_frames_flow_both_ways() {
    let me = master();
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let (client_keys, server_keys) = (keyring(SECRET), keyring(SECRET));
    let client_keys_signing = PrincipalKeys::cluster(client_keys.signing());
    let (client, server) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &me, &client_keys_signing),
        server_handshake(&mut sr, &mut sw, &server_keys),
    );
    let (client_seal, client_open) = client.unwrap();
    let (principal, server_seal, server_open) = server.unwrap();
    assert_eq!(principal, master());
    cw.set_sealer(client_seal);
    cr.set_opener(client_open);
    sw.set_sealer(server_seal);
    sr.set_opener(server_open);

    for id in 1..4 {
        cw.write_frame(&ping(id)).await.unwrap();
        cw.flush().await.unwrap();
        let got = sr.read_frame().await.unwrap().unwrap();
        assert!(got.tag.is_some());
        assert_eq!((got.request_id, &got.body[..]), (id, &b"ping"[..]));
        sw.write_frame(&ping(id + 100)).await.unwrap();
        sw.flush().await.unwrap();
        let got = cr.read_frame().await.unwrap().unwrap();
        assert_eq!(got.request_id, id + 100);
    }
}

#[tokio::test]
async fn a_rotated_server_accepts_a_client_on_the_old_secret() {
    let me = master();
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let old = keyring(SECRET);
    let rotated = keyring(&format!("{OTHER}\n{SECRET}\n"));
    let old_signing = PrincipalKeys::cluster(old.signing());
    let (client, server) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &me, &old_signing),
        server_handshake(&mut sr, &mut sw, &rotated),
    );
    client.unwrap();
    server.unwrap();
}

#[tokio::test]
async fn a_wrong_secret_is_refused_on_both_sides() {
    let me = master();
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let (client_keys, server_keys) = (keyring(OTHER), keyring(SECRET));
    let client_keys_signing = PrincipalKeys::cluster(client_keys.signing());
    let (client, server) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &me, &client_keys_signing),
        server_handshake(&mut sr, &mut sw, &server_keys),
    );
    assert!(
        matches!(server, Err(AuthError::UnknownKid(_))),
        "{server:?}"
    );
    match client {
        Err(AuthError::Refused { code, .. }) => assert_eq!(code, ErrorCode::Unauthenticated),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_fake_server_fails_the_clients_proof_check() {
    let me = master();
    // The server claims the client's kid but holds another secret: its proof fails.
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let client_keys = keyring(SECRET);
    let client_keys_signing = PrincipalKeys::cluster(client_keys.signing());
    let fake = async {
        let frame = sr.read_frame().await.unwrap().unwrap();
        assert_eq!(frame.kind, MessageType::Hello);
        let welcome = pb::WelcomeHeader {
            server_nonce: vec![9; 32],
            proof: vec![0; 32],
        };
        sw.write_frame(&OutFrame::new(MessageType::Welcome, 0, &welcome))
            .await
            .unwrap();
        sw.flush().await.unwrap();
    };
    let (client, ()) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &me, &client_keys_signing),
        fake
    );
    assert!(matches!(client, Err(AuthError::BadProof)), "{client:?}");
}

#[tokio::test]
async fn anything_but_a_small_hello_is_refused_before_it_is_read() {
    let server_keys = keyring(SECRET);
    // A control frame without a handshake.
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    cw.write_frame(&OutFrame::new(MessageType::Reserve, 7, &pb::Ack {}))
        .await
        .unwrap();
    cw.flush().await.unwrap();
    let refused = server_handshake(&mut sr, &mut sw, &server_keys).await;
    assert!(
        matches!(refused, Err(AuthError::Handshake(_))),
        "{refused:?}"
    );
    let answer = cr.read_frame().await.unwrap().unwrap();
    assert_eq!((answer.kind, answer.request_id), (MessageType::Error, 7));

    // A hello with a header larger than allowed.
    let ((_cr, mut cw), (mut sr, mut sw)) = pair().await;
    let hello = pb::HelloHeader {
        principal: format!("worker:{}", "x".repeat(MAX_HELLO_HEADER as usize)),
        client_nonce: vec![1; 32],
        kid: vec![0; 4],
    };
    cw.write_frame(&OutFrame::new(MessageType::Hello, 0, &hello))
        .await
        .unwrap();
    cw.flush().await.unwrap();
    assert!(server_handshake(&mut sr, &mut sw, &server_keys)
        .await
        .is_err());

    // An application principal keyed with the cluster's own keys instead of its token.
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let app = Principal::App("a".into());
    let cluster_keys = PrincipalKeys::cluster(server_keys.signing());
    let (client, server) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &app, &cluster_keys),
        server_handshake(&mut sr, &mut sw, &server_keys),
    );
    // The server derived the session from the application's token: its proof fails on the
    // client, and the client's first tag would fail on the server.
    assert!(matches!(client, Err(AuthError::BadProof)), "{client:?}");
    let _ = server;
}

#[tokio::test]
async fn an_application_session_is_keyed_by_its_token() {
    let keyring = keyring(SECRET);
    let signing = keyring.signing();
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let app = Principal::App("app-1".into());
    let keys = PrincipalKeys::app(signing.kid(), &signing.app_token("app-1"));
    let (client, server) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &app, &keys),
        server_handshake(&mut sr, &mut sw, &keyring),
    );
    client.unwrap();
    assert_eq!(server.unwrap().0, app);

    // Another application's token does not open a session as this one.
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let stolen = PrincipalKeys::app(signing.kid(), &signing.app_token("app-2"));
    let (client, server) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &app, &stolen),
        server_handshake(&mut sr, &mut sw, &keyring),
    );
    assert!(client.is_err(), "{client:?}");
    let _ = server;
}

#[tokio::test]
async fn a_frame_replayed_from_another_connection_is_refused() {
    let me = master();
    let keys = keyring(SECRET);
    let signing = PrincipalKeys::cluster(keys.signing());
    // First connection: record the bytes of a tagged frame the client sends.
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let (client, server) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &me, &signing),
        server_handshake(&mut sr, &mut sw, &keys),
    );
    let mut recorder = FrameWriter::new(Vec::new());
    recorder.set_sealer(client.unwrap().0);
    recorder.write_frame(&ping(1)).await.unwrap();
    recorder.flush().await.unwrap();
    let captured = recorder.get_ref().clone();
    // The frame verifies on its own connection.
    let (_, _, first_open) = server.unwrap();
    let mut check = FrameReader::new(&captured[..], FrameLimits::default());
    check.set_opener(first_open);
    check.read_frame().await.unwrap().unwrap();

    // Second connection: a genuine handshake, then the captured frame.
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair().await;
    let (client, server) = tokio::join!(
        client_handshake(&mut cr, &mut cw, &me, &signing),
        server_handshake(&mut sr, &mut sw, &keys),
    );
    client.unwrap();
    let (_, _, opener) = server.unwrap();
    sr.set_opener(opener);
    let mut raw = cw.into_inner();
    raw.write_all(&captured).await.unwrap();
    raw.flush().await.unwrap();
    assert!(matches!(
        sr.read_frame().await,
        Err(ReadError::Auth(AuthError::BadTag { seq: 0, .. }))
    ));
}
