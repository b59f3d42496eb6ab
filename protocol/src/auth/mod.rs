//! Authentication: cluster secrets, principals, and the per-connection sessions that tag
//! data-plane frames.
//!
//! - [`Secret`]: secret bytes whose `Debug` prints `<redacted>`.
//! - [`Keyring`]: the cluster secrets read from `cluster_secret_file`, one per line. The first
//!   signs, every one verifies (rotation). Each secret is known by its [`Kid`], computed from it,
//!   and yields domain-separated subkeys ([`ClusterKey::frames`], `grpc`, `wrap`), each
//!   `HMAC(secret, label)`, so a key used for one purpose never verifies another.
//! - [`Principal`]: who a session or request speaks for (`master:<id>`, `worker:<id>`, `admin`,
//!   `app:<id>`).
//! - [`session`]: the data-plane session. The client's `Hello` names a principal, a key id and a
//!   nonce; the server's `Welcome` adds its own nonce and a proof. Both derive the same
//!   [`SessionKey`] from the principal's key and both nonces, and from then on every frame is
//!   tagged by a [`Sealer`] and checked by an [`Opener`], each keeping an implicit sequence number
//!   per direction, so a frame replayed, reordered or dropped fails its tag.
//!
//! Everything here is HMAC-SHA256 and SHA-256 from `ring`, the crypto provider TLS uses too.

pub mod app;
pub mod grpc;
mod keyring;
mod principal;
pub mod session;

pub use app::{app_key, verifier, PrincipalKeys, APP_KEY_LEN};
pub use grpc::{sign, sign_raw, ReplayCache, SignedRequest, Verifier, AUTH_METADATA};
pub use keyring::{ClusterKey, Keyring, Kid, KID_LEN, MIN_SECRET_LEN};
pub use principal::Principal;
pub use session::{
    client_handshake, new_nonce, nonce_from, server_handshake, Direction, Nonce, Opener, Sealer,
    SessionKey, MAX_HELLO_HEADER, NONCE_LEN, PROOF_LEN,
};

use crate::ErrorCode;

/// Secret bytes (a cluster secret, an application secret). `Debug` never shows them, so a
/// secret inside a config struct or an error cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The secret's bytes: call only to key an HMAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why credentials could not be loaded, parsed or verified. Messages never contain secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the cluster secret file {path}: {source}")]
    ReadSecretFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster secret file {path} holds no secret")]
    NoSecret { path: String },
    #[error(
        "line {line} of the cluster secret file {path} holds a secret of {len} bytes; \
         at least {MIN_SECRET_LEN} are required"
    )]
    ShortSecret {
        path: String,
        line: usize,
        len: usize,
    },
    #[error(
        "line {line} of the cluster secret file {path} repeats the key id {kid} of line {first}"
    )]
    DuplicateKid {
        path: String,
        line: usize,
        first: usize,
        kid: Kid,
    },
    #[error("bad principal {text:?}: {reason}")]
    BadPrincipal { text: String, reason: &'static str },
    #[error("unknown cluster key id {0}")]
    UnknownKid(String),
    #[error("bad {what}: expected {expected} bytes, got {actual}")]
    BadLength {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error(
        "the server's proof of the session key does not verify: wrong secret or a fake server"
    )]
    BadProof,
    #[error("frame {seq} ({direction}) fails its tag: forged, replayed, reordered or dropped")]
    BadTag { direction: Direction, seq: u64 },
    #[error("frame {seq} ({direction}) is not tagged inside an authenticated session")]
    Untagged { direction: Direction, seq: u64 },
    #[error("no randomness available for a nonce")]
    Random,
    /// The peer sent something other than the expected `Hello` or `Welcome`.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The connection broke or closed during the handshake (retryable).
    #[error("connection lost during the handshake: {0}")]
    Connection(String),
    #[error(
        "the request carries no credentials and this cluster requires authentication: give the \
         client the application's secret (Spark: spark.authenticate or spark.sluice.auth.secret)"
    )]
    NoCredentials,
    #[error("malformed request signature: {0}")]
    BadSignature(String),
    #[error("the signature of {principal} does not verify: wrong secret, or the request changed")]
    BadMac { principal: String },
    #[error(
        "the request was signed {off_ms} ms away from this server's clock (at most {skew_ms} ms \
         allowed, auth_clock_skew): clock skew, or a replay"
    )]
    Stale { off_ms: u64, skew_ms: u64 },
    #[error("the request was seen before: a replay")]
    Replayed,
    #[error("too many signed requests to remember within the replay window; retry later")]
    ReplayCacheFull,
    /// The server refused the client's `Hello` with an `Error` frame.
    #[error("the server refused the handshake ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
}

impl AuthError {
    /// The code this error maps to: bad configuration is `Internal`, a malformed principal is
    /// `InvalidRequest`, anything about credentials is `Unauthenticated`.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::ReadSecretFile { .. }
            | AuthError::NoSecret { .. }
            | AuthError::ShortSecret { .. }
            | AuthError::DuplicateKid { .. }
            | AuthError::Random => ErrorCode::Internal,
            AuthError::Refused { code, .. } => *code,
            AuthError::Connection(_) | AuthError::ReplayCacheFull => ErrorCode::Unavailable,
            AuthError::BadPrincipal { .. } | AuthError::BadLength { .. } => {
                ErrorCode::InvalidRequest
            }
            AuthError::UnknownKid(_)
            | AuthError::BadProof
            | AuthError::BadTag { .. }
            | AuthError::Untagged { .. }
            | AuthError::Handshake(_)
            | AuthError::NoCredentials
            | AuthError::BadSignature(_)
            | AuthError::BadMac { .. }
            | AuthError::Stale { .. }
            | AuthError::Replayed => ErrorCode::Unauthenticated,
        }
    }
}

pub type AuthResult<T> = Result<T, AuthError>;

/// HMAC-SHA256 of the concatenation of `pieces` under `key`.
pub(crate) fn hmac(key: &ring::hmac::Key, pieces: &[&[u8]]) -> [u8; 32] {
    let mut context = ring::hmac::Context::with_key(key);
    for piece in pieces {
        context.update(piece);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.sign().as_ref());
    out
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_secret_is_redacted() {
        let secret = Secret::new(b"correct horse battery staple, and then some".to_vec());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(<redacted>)");
        assert!(!format!("{secret:#?}").contains("horse"));
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
