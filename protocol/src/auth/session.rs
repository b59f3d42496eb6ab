//! The data-plane session: a key per connection, and the tag of every frame.
//!
//! ```text
//!  client                                              server
//!    Hello { principal, client_nonce, kid }  ------>
//!                                            <------  Welcome { server_nonce, proof }
//!  K_session = HMAC(K_p, "sluice session v1\0" || principal || "\0" || client_nonce || server_nonce)
//!  proof     = HMAC(K_session, "server proof")
//!  tag       = HMAC(K_session, dir || seq_u64 || head[0..28] || header)    on every later frame
//! ```
//!
//! `K_p` is the `frames` subkey of the cluster secret named by `kid` for a cluster principal,
//! and the application's key for `app:<id>`. Both nonces are fresh per connection, so bytes
//! captured from one connection never verify on another. `dir` is 0 client to server and 1
//! server to client, so a frame reflected back to its sender fails. `seq` is never sent: the
//! [`Sealer`] and [`Opener`] of a direction each count frames, and TCP keeps them in order, so a
//! frame replayed, reordered or dropped inside a connection fails its tag and every later one.
//! The body is not covered; the head's CRC of header and body is (see `docs/security.md`).
//!
//! [`client_handshake`] and [`server_handshake`] run the exchange over a fresh connection's
//! [`FrameReader`] and [`FrameWriter`] and return the halves to install with
//! `set_sealer`/`set_opener`.

use bytes::Bytes;
use ring::hmac;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{AuthError, AuthResult, Keyring, Principal, PrincipalKeys};
use crate::connection::{FrameReader, FrameWriter, OutFrame, ReadError};
use crate::frame::{FrameHead, MessageType, FLAG_AUTH, TAG_LEN};
use crate::pb;

/// Length of a session nonce.
pub const NONCE_LEN: usize = 32;
/// Length of the server's proof in `WelcomeHeader.proof`.
pub const PROOF_LEN: usize = 32;

pub type Nonce = [u8; NONCE_LEN];

const SESSION_LABEL: &[u8] = b"sluice session v1\0";
const PROOF_LABEL: &[u8] = b"server proof";

/// A fresh random nonce from the operating system's generator.
pub fn new_nonce() -> AuthResult<Nonce> {
    let nonce: ring::rand::Random<Nonce> =
        ring::rand::generate(&ring::rand::SystemRandom::new()).map_err(|_| AuthError::Random)?;
    Ok(nonce.expose())
}

/// A nonce received from a peer (`HelloHeader.client_nonce`, `WelcomeHeader.server_nonce`).
pub fn nonce_from(bytes: &[u8], what: &'static str) -> AuthResult<Nonce> {
    bytes.try_into().map_err(|_| AuthError::BadLength {
        what,
        expected: NONCE_LEN,
        actual: bytes.len(),
    })
}

/// Which way a frame travels; part of every tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    ClientToServer = 0,
    ServerToClient = 1,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::ClientToServer => "client to server",
            Direction::ServerToClient => "server to client",
        })
    }
}

/// The key of one connection, bound to its principal and both nonces.
pub struct SessionKey {
    key: hmac::Key,
}

impl SessionKey {
    /// `K_session`, from the principal's key `principal_key` (`K_p`) and both nonces.
    pub fn derive(
        principal_key: &hmac::Key,
        principal: &Principal,
        client_nonce: &Nonce,
        server_nonce: &Nonce,
    ) -> SessionKey {
        let principal = principal.to_string();
        let session = super::hmac(
            principal_key,
            &[
                SESSION_LABEL,
                principal.as_bytes(),
                b"\0",
                client_nonce,
                server_nonce,
            ],
        );
        SessionKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &session),
        }
    }

    /// The server's proof that it derived the same key (`WelcomeHeader.proof`).
    pub fn proof(&self) -> [u8; PROOF_LEN] {
        super::hmac(&self.key, &[PROOF_LABEL])
    }

    /// Checks the server's proof, in constant time. A server without the principal's key (a
    /// fake worker at a forged address) fails here, before the client sends it anything.
    pub fn verify_proof(&self, proof: &[u8]) -> AuthResult<()> {
        if super::constant_time_eq(&self.proof(), proof) {
            Ok(())
        } else {
            Err(AuthError::BadProof)
        }
    }

    /// The client's halves: it seals client-to-server frames and opens server-to-client ones.
    pub fn client(self) -> (Sealer, Opener) {
        self.split(Direction::ClientToServer, Direction::ServerToClient)
    }

    /// The server's halves: it seals server-to-client frames and opens client-to-server ones.
    pub fn server(self) -> (Sealer, Opener) {
        self.split(Direction::ServerToClient, Direction::ClientToServer)
    }

    fn split(self, sends: Direction, receives: Direction) -> (Sealer, Opener) {
        (
            Sealer {
                key: self.key.clone(),
                direction: sends,
                seq: 0,
            },
            Opener {
                key: self.key,
                direction: receives,
                seq: 0,
            },
        )
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// `HMAC(K_session, dir || seq_u64 || head[0..28] || header)`.
fn tag(
    key: &hmac::Key,
    direction: Direction,
    seq: u64,
    head: &FrameHead,
    header: &[u8],
) -> [u8; TAG_LEN] {
    super::hmac(
        key,
        &[
            &[direction as u8],
            &seq.to_be_bytes(),
            &head.encode(),
            header,
        ],
    )
}

/// Tags the frames one side of a session writes, in the order it writes them.
pub struct Sealer {
    key: hmac::Key,
    direction: Direction,
    seq: u64,
}

impl Sealer {
    /// Flags `head` with [`FLAG_AUTH`] and returns the tag to write between head and header.
    /// Call exactly once per frame, in the order frames go on the wire.
    pub fn seal(&mut self, head: &mut FrameHead, header: &[u8]) -> [u8; TAG_LEN] {
        head.flags |= FLAG_AUTH;
        let tag = tag(&self.key, self.direction, self.seq, head, header);
        self.seq += 1;
        tag
    }

    /// The sequence number of the next frame sealed.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("direction", &self.direction)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Checks the tags of the frames one side of a session reads, in the order it reads them.
pub struct Opener {
    key: hmac::Key,
    direction: Direction,
    seq: u64,
}

impl Opener {
    /// Checks the tag of the next frame, in constant time. `tag` is `None` for a frame without
    /// [`FLAG_AUTH`], which is refused. After an error the session is broken (the sequence no
    /// longer matches the peer's): close the connection.
    pub fn open(
        &mut self,
        head: &FrameHead,
        tag: Option<&[u8; TAG_LEN]>,
        header: &[u8],
    ) -> AuthResult<()> {
        let seq = self.seq;
        let direction = self.direction;
        let Some(received) = tag.filter(|_| head.is_tagged()) else {
            return Err(AuthError::Untagged { direction, seq });
        };
        let expected = self::tag(&self.key, direction, seq, head, header);
        if !super::constant_time_eq(&expected, received) {
            return Err(AuthError::BadTag { direction, seq });
        }
        self.seq += 1;
        Ok(())
    }

    /// The sequence number of the next frame expected.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("direction", &self.direction)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Largest `Hello` header a server reads before the handshake; a `Hello` has no body.
pub const MAX_HELLO_HEADER: u32 = 4096;

fn broken(what: &str, error: impl std::fmt::Display) -> AuthError {
    AuthError::Handshake(format!("{what}: {error}"))
}

fn lost(what: &str, error: impl std::fmt::Display) -> AuthError {
    AuthError::Connection(format!("{what}: {error}"))
}

/// A read error during the handshake: a broken connection, or bytes that are no frame.
fn read_failed(what: &str, error: ReadError) -> AuthError {
    match error {
        ReadError::Io(_) | ReadError::Truncated { .. } => lost(what, error),
        other => broken(what, other),
    }
}

/// The client's side of the handshake on a fresh connection: sends `Hello` as `principal`
/// keyed by `keys`, reads `Welcome`, checks the server's proof, and
/// returns the session's halves for [`FrameWriter::set_sealer`] and
/// [`FrameReader::set_opener`]. The caller bounds it with a timeout.
pub async fn client_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    principal: &Principal,
    keys: &PrincipalKeys,
) -> AuthResult<(Sealer, Opener)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let key = keys;
    let client_nonce = new_nonce()?;
    let hello = pb::HelloHeader {
        principal: principal.to_string(),
        client_nonce: client_nonce.to_vec(),
        kid: key.kid().as_bytes().to_vec(),
    };
    writer
        .write_frame(&OutFrame::new(MessageType::Hello, 0, &hello))
        .await
        .map_err(|e| lost("sending hello", e))?;
    writer.flush().await.map_err(|e| lost("sending hello", e))?;
    let answer = match reader.read_frame().await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(AuthError::Connection("closed before welcome".into())),
        Err(e) => return Err(read_failed("reading welcome", e)),
    };
    match answer.kind {
        MessageType::Welcome if answer.tag.is_none() && answer.body.is_empty() => {}
        MessageType::Error => {
            let error: pb::ErrorHeader = answer
                .decode_header("error")
                .map_err(|e| broken("reading welcome", e))?;
            return Err(AuthError::Refused {
                code: crate::ErrorCode::from_u32(error.code),
                message: error.message,
            });
        }
        other => {
            return Err(AuthError::Handshake(format!(
                "expected welcome, got {other:?}"
            )))
        }
    }
    let welcome: pb::WelcomeHeader = answer
        .decode_header("welcome")
        .map_err(|e| broken("reading welcome", e))?;
    let server_nonce = nonce_from(&welcome.server_nonce, "server nonce")?;
    let session = SessionKey::derive(key.frames(), principal, &client_nonce, &server_nonce);
    session.verify_proof(&welcome.proof)?;
    Ok(session.client())
}

/// The server's side of the handshake on a fresh connection: reads one frame, which must be an
/// untagged `Hello` of at most [`MAX_HELLO_HEADER`] header bytes and no body (anything else is
/// refused before it is read), looks up the key its kid names, and answers `Welcome`. Returns
/// the peer's principal and the session's halves. On failure an `Error` frame has been sent
/// (when the connection still works): close the connection. The caller bounds it with a
/// timeout. Every principal's key is derived from the keyring (an application's from its
/// token, see [`super::app`]).
pub async fn server_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    keyring: &Keyring,
) -> AuthResult<(Principal, Sealer, Opener)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut request_id = 0;
    let result = async {
        let head = match reader.read_head().await {
            Ok(Some(head)) => head,
            Ok(None) => return Err(AuthError::Connection("closed before hello".into())),
            Err(e) => return Err(read_failed("reading hello", e)),
        };
        request_id = head.request_id;
        if head.kind != MessageType::Hello {
            return Err(AuthError::Handshake(format!(
                "expected hello, got {:?}",
                head.kind
            )));
        }
        if head.is_tagged() || head.body_len != 0 || head.header_len > MAX_HELLO_HEADER {
            return Err(AuthError::Handshake(
                "a hello is untagged, has no body and a header of at most 4 KiB".into(),
            ));
        }
        let frame = reader
            .read_rest(&head, Bytes::from)
            .await
            .map_err(|e| read_failed("reading hello", e))?;
        let hello: pb::HelloHeader = frame
            .decode_header("hello")
            .map_err(|e| broken("reading hello", e))?;
        let principal: Principal = hello.principal.parse()?;
        let kid = super::Kid::from_bytes(&hello.kid)?;
        let key = keyring.keys_for(&principal, kid)?;
        let client_nonce = nonce_from(&hello.client_nonce, "client nonce")?;
        let server_nonce = new_nonce()?;
        let session = SessionKey::derive(key.frames(), &principal, &client_nonce, &server_nonce);
        let welcome = pb::WelcomeHeader {
            server_nonce: server_nonce.to_vec(),
            proof: session.proof().to_vec(),
        };
        writer
            .write_frame(&OutFrame::new(MessageType::Welcome, request_id, &welcome))
            .await
            .map_err(|e| lost("sending welcome", e))?;
        writer
            .flush()
            .await
            .map_err(|e| lost("sending welcome", e))?;
        let (sealer, opener) = session.server();
        Ok((principal, sealer, opener))
    }
    .await;
    if let Err(error) = &result {
        let refusal = OutFrame::error(request_id, error.code(), error.to_string());
        if writer.write_frame(&refusal).await.is_ok() {
            let _ = writer.flush().await;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::auth::Keyring;
    use crate::frame::{self, FrameLimits, MessageType};

    const OLD: &str = "old-secret-old-secret-old-secret-old-secret";
    const NEW: &str = "new-secret-new-secret-new-secret-new-secret";

    fn app() -> Principal {
        Principal::App("app-1".into())
    }

    /// Both ends of a session over the same key, as the handshake would set them up.
    fn session(
        key: &hmac::Key,
        client_nonce: &Nonce,
        server_nonce: &Nonce,
    ) -> ((Sealer, Opener), (Sealer, Opener)) {
        let client = SessionKey::derive(key, &app(), client_nonce, server_nonce);
        let server = SessionKey::derive(key, &app(), client_nonce, server_nonce);
        (client.client(), server.server())
    }

    fn frames_key() -> hmac::Key {
        Keyring::parse("test", OLD.as_bytes())
            .unwrap()
            .signing()
            .frames()
            .clone()
    }

    fn push(request_id: u64, header: &[u8]) -> FrameHead {
        frame::head_for(
            MessageType::PushData,
            request_id,
            header,
            &[Bytes::from_static(b"body")],
            true,
        )
        .unwrap()
    }

    #[test]
    fn tags_verify_in_both_directions_frame_after_frame() {
        let key = frames_key();
        let ((mut client_seal, mut client_open), (mut server_seal, mut server_open)) =
            session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]);
        for id in 0..5u64 {
            let header = format!("header {id}");
            let mut head = push(id, header.as_bytes());
            let tag = client_seal.seal(&mut head, header.as_bytes());
            assert!(head.is_tagged());
            server_open
                .open(&head, Some(&tag), header.as_bytes())
                .unwrap();

            let mut answer = frame::head_for(MessageType::Ack, id, b"", &[], true).unwrap();
            let tag = server_seal.seal(&mut answer, b"");
            client_open.open(&answer, Some(&tag), b"").unwrap();
        }
        assert_eq!((client_seal.next_seq(), server_open.next_seq()), (5, 5));
    }

    #[test]
    fn a_tagged_frame_survives_the_codec() {
        let key = frames_key();
        let ((mut seal, _), (_, mut open)) = session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]);
        let body = [Bytes::from_static(b"body")];
        let mut head = frame::head_for(MessageType::PushData, 9, b"hdr", &body, true).unwrap();
        let tag = seal.seal(&mut head, b"hdr");
        let bytes = frame::encode_head_to_vec(&head, Some(&tag), b"hdr", &body);
        let mut buf = BytesMut::from(&bytes[..]);
        let limits = FrameLimits::default();
        let received = frame::check(&buf, &limits).unwrap();
        let parsed = frame::parse(&mut buf, &limits).unwrap();
        open.open(&received, parsed.tag.as_ref(), &parsed.header)
            .unwrap();
    }

    #[test]
    fn a_tag_from_another_session_fails() {
        let key = frames_key();
        let ((mut seal, _), _) = session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]);
        let mut head = push(1, b"hdr");
        let tag = seal.seal(&mut head, b"hdr");
        // Same key and client nonce, a new server nonce: a replay onto a new connection.
        for (client_nonce, server_nonce) in [
            ([1; NONCE_LEN], [3; NONCE_LEN]),
            ([4; NONCE_LEN], [2; NONCE_LEN]),
        ] {
            let (_, (_, mut open)) = session(&key, &client_nonce, &server_nonce);
            assert!(matches!(
                open.open(&head, Some(&tag), b"hdr"),
                Err(AuthError::BadTag { seq: 0, .. })
            ));
        }
        // Same nonces, another principal.
        let mut open = SessionKey::derive(
            &key,
            &Principal::App("app-2".into()),
            &[1; NONCE_LEN],
            &[2; NONCE_LEN],
        )
        .server()
        .1;
        assert!(open.open(&head, Some(&tag), b"hdr").is_err());
    }

    #[test]
    fn a_replayed_or_reordered_frame_fails() {
        let key = frames_key();
        let ((mut seal, _), (_, mut open)) = session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]);
        let mut first = push(1, b"first");
        let first_tag = seal.seal(&mut first, b"first");
        let mut second = push(2, b"second");
        let second_tag = seal.seal(&mut second, b"second");

        // Reordered: the second frame arrives first.
        let (_, (_, mut reordered)) = session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]);
        assert!(matches!(
            reordered.open(&second, Some(&second_tag), b"second"),
            Err(AuthError::BadTag { seq: 0, .. })
        ));

        // Replayed: the first frame again, after it was accepted.
        open.open(&first, Some(&first_tag), b"first").unwrap();
        assert!(matches!(
            open.open(&first, Some(&first_tag), b"first"),
            Err(AuthError::BadTag { seq: 1, .. })
        ));
    }

    #[test]
    fn a_frame_reflected_to_its_sender_fails() {
        let key = frames_key();
        let ((mut seal, mut client_open), _) = session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]);
        let mut head = push(1, b"hdr");
        let tag = seal.seal(&mut head, b"hdr");
        assert!(client_open.open(&head, Some(&tag), b"hdr").is_err());
    }

    #[test]
    fn a_flipped_bit_in_head_tag_or_header_fails() {
        let key = frames_key();
        let header = b"a protobuf header".to_vec();
        let mut head = push(7, &header);
        let ((mut seal, _), _) = session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]);
        let tag = seal.seal(&mut head, &header);
        let fresh_opener = || session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]).1 .1;
        fresh_opener().open(&head, Some(&tag), &header).unwrap();

        for byte in 0..header.len() {
            let mut flipped = header.clone();
            flipped[byte] ^= 1;
            assert!(fresh_opener().open(&head, Some(&tag), &flipped).is_err());
        }
        for byte in 0..TAG_LEN {
            let mut flipped = tag;
            flipped[byte] ^= 0x80;
            assert!(fresh_opener().open(&head, Some(&flipped), &header).is_err());
        }
        let changed_heads = [
            FrameHead {
                request_id: 8,
                ..head
            },
            FrameHead {
                body_len: head.body_len + 1,
                ..head
            },
            FrameHead {
                crc: head.crc ^ 1,
                ..head
            },
            FrameHead {
                flags: head.flags | frame::FLAG_REPLICA,
                ..head
            },
            FrameHead {
                kind: MessageType::PushMergedData,
                ..head
            },
        ];
        for changed in changed_heads {
            assert!(fresh_opener().open(&changed, Some(&tag), &header).is_err());
        }
    }

    #[test]
    fn an_untagged_frame_is_refused() {
        let key = frames_key();
        let (_, (_, mut open)) = session(&key, &[1; NONCE_LEN], &[2; NONCE_LEN]);
        let head = push(1, b"hdr");
        assert!(matches!(
            open.open(&head, None, b"hdr"),
            Err(AuthError::Untagged { seq: 0, .. })
        ));
        // A tag on a head without the flag is refused too.
        assert!(open.open(&head, Some(&[0; TAG_LEN]), b"hdr").is_err());
        assert_eq!(open.next_seq(), 0);
    }

    #[test]
    fn the_server_proves_the_session_key() {
        let key = frames_key();
        let client = SessionKey::derive(&key, &app(), &[1; NONCE_LEN], &[2; NONCE_LEN]);
        let server = SessionKey::derive(&key, &app(), &[1; NONCE_LEN], &[2; NONCE_LEN]);
        client.verify_proof(&server.proof()).unwrap();

        let wrong_secret = Keyring::parse("test", NEW.as_bytes()).unwrap();
        let fake = SessionKey::derive(
            wrong_secret.signing().frames(),
            &app(),
            &[1; NONCE_LEN],
            &[2; NONCE_LEN],
        );
        assert!(matches!(
            client.verify_proof(&fake.proof()),
            Err(AuthError::BadProof)
        ));
        assert!(client.verify_proof(&server.proof()[..31]).is_err());
        assert_eq!(format!("{client:?}"), "SessionKey(<redacted>)");
    }

    #[test]
    fn the_session_key_is_the_documented_hmac() {
        let key = frames_key();
        let session = SessionKey::derive(&key, &app(), &[1; NONCE_LEN], &[2; NONCE_LEN]);
        let mut input = b"sluice session v1\0app:app-1\0".to_vec();
        input.extend_from_slice(&[1; NONCE_LEN]);
        input.extend_from_slice(&[2; NONCE_LEN]);
        let expected = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&key, &input).as_ref());
        assert_eq!(
            session.proof().as_slice(),
            hmac::sign(&expected, b"server proof").as_ref()
        );
    }

    #[test]
    fn rotation_verifies_sessions_keyed_by_the_second_secret() {
        // A peer that has not rotated yet still signs with the old secret; a rotated keyring
        // (new first, old second) finds the old key by the kid the peer's Hello names.
        let old_peer = Keyring::parse("old", OLD.as_bytes()).unwrap();
        let rotated = Keyring::parse("rotated", format!("{NEW}\n{OLD}\n").as_bytes()).unwrap();
        assert_ne!(rotated.signing().kid(), old_peer.signing().kid());
        let kid = old_peer.signing().kid();
        let server_key = rotated.get(kid).unwrap();

        let (client_nonce, server_nonce) = (new_nonce().unwrap(), new_nonce().unwrap());
        let principal = Principal::Worker("w1".into());
        let client = SessionKey::derive(
            old_peer.signing().frames(),
            &principal,
            &client_nonce,
            &server_nonce,
        );
        let server = SessionKey::derive(
            server_key.frames(),
            &principal,
            &client_nonce,
            &server_nonce,
        );
        client.verify_proof(&server.proof()).unwrap();
        let (mut seal, _) = client.client();
        let (_, mut open) = server.server();
        let mut head = push(1, b"hdr");
        let tag = seal.seal(&mut head, b"hdr");
        open.open(&head, Some(&tag), b"hdr").unwrap();

        // Keyed by the new (signing) secret instead, the same frame fails.
        let (_, mut open) = SessionKey::derive(
            rotated.signing().frames(),
            &principal,
            &client_nonce,
            &server_nonce,
        )
        .server();
        assert!(open.open(&head, Some(&tag), b"hdr").is_err());
    }

    #[test]
    fn nonces_are_fresh_and_checked_for_length() {
        assert_ne!(new_nonce().unwrap(), new_nonce().unwrap());
        assert_eq!(
            nonce_from(&[5; NONCE_LEN], "nonce").unwrap(),
            [5; NONCE_LEN]
        );
        assert!(matches!(
            nonce_from(&[5; 16], "client nonce"),
            Err(AuthError::BadLength { actual: 16, .. })
        ));
    }

    #[test]
    fn secrets_of_the_keyring_are_never_printed() {
        let keyring = Keyring::parse("test", format!("{OLD}\n{NEW}").as_bytes()).unwrap();
        let printed = format!("{keyring:?}");
        assert!(!printed.contains("secret"), "{printed}");
    }
}
