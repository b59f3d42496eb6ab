//! Signed gRPC requests.
//!
//! A request of a principal carries the metadata [`AUTH_METADATA`]:
//! `v1;k=<kid hex>;t=<unix ms>;n=<nonce hex>;m=<mac hex>;p=<principal>`, where
//! `m = HMAC(grpc key, "sluice grpc v1\0" || request type || "\0" || principal || "\0" || kid ||
//! t || n || protobuf encoding of the request)`. The grpc key is the cluster's for a cluster
//! principal and the application's (from its token) for an application.
//!
//! The server decodes the request, encodes it again and checks the MAC over that encoding:
//! prost writes the fields of a message in one order and leaves out defaults, so both sides
//! produce the same bytes from the same message (the protocol has no map fields). The
//! [`Verifier`] also refuses a time further than the allowed clock skew from its own, and a
//! nonce it has seen within that window ([`ReplayCache`]).
//!
//! gRPC requests are signed one by one (where data-plane frames ride a session) because tonic
//! gives handlers no per-connection state, and control calls are few: a timestamp and a nonce
//! cost little there.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::{hmac, AuthError, AuthResult, Keyring, Kid, Principal, PrincipalKeys, KID_LEN};
use crate::pb;

/// The metadata key of a request's signature.
pub const AUTH_METADATA: &str = "sluice-auth";

const NONCE: usize = 16;

/// A request type that can be signed: its name goes into the MAC, so a signature made for one
/// kind of request never verifies another.
pub trait SignedRequest: Message + Sized {
    const NAME: &'static str;
}

macro_rules! signed_requests {
    ($($name:ident),* $(,)?) => {
        $(impl SignedRequest for pb::$name {
            const NAME: &'static str = concat!("sluice.", stringify!($name));
        })*
    };
}

signed_requests!(
    RegisterWorkerRequest,
    WorkerHeartbeatRequest,
    RegisterShuffleRequest,
    MapperEndRequest,
    ReviveRequest,
    GetShuffleLayoutRequest,
    UnregisterShuffleRequest,
    AppHeartbeatRequest,
    ClusterStatusRequest,
    MasterStatusRequest,
    ChangeMastersRequest,
    RegisterApplicationRequest,
    RaftMessage,
    DrainPlanRequest,
    MoveCopiesRequest,
);

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The MAC of request `name` with `body` (see the module overview).
fn mac_raw(
    keys: &PrincipalKeys,
    name: &str,
    principal: &str,
    kid: Kid,
    time: u64,
    nonce: &[u8],
    body: &[u8],
) -> [u8; 32] {
    hmac(
        keys.grpc(),
        &[
            b"sluice grpc v1\0",
            name.as_bytes(),
            b"\0",
            principal.as_bytes(),
            b"\0",
            kid.as_bytes(),
            &time.to_le_bytes(),
            nonce,
            body,
        ],
    )
}

/// `message` as a request signed by `principal` with `keys`.
pub fn sign<T: SignedRequest>(
    principal: &Principal,
    keys: &PrincipalKeys,
    message: T,
) -> AuthResult<tonic::Request<T>> {
    let value = sign_raw(principal, keys, T::NAME, &message.encode_to_vec())?;
    let value = value.parse().map_err(|_| AuthError::BadPrincipal {
        text: principal.to_string(),
        reason: "a signed principal must be printable ASCII",
    })?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(AUTH_METADATA, value);
    Ok(request)
}

/// The [`AUTH_METADATA`] value signing request `name` with `body` (for requests that are not
/// gRPC: the admin port's `POST`s, named `"<METHOD> <path and query>"`).
pub fn sign_raw(
    principal: &Principal,
    keys: &PrincipalKeys,
    name: &str,
    body: &[u8],
) -> AuthResult<String> {
    let mut nonce = [0u8; NONCE];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| AuthError::Random)?;
    let time = unix_ms(SystemTime::now());
    let who = principal.to_string();
    if !who.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::BadPrincipal {
            text: who,
            reason: "a signed principal must be printable ASCII",
        });
    }
    let kid = keys.kid();
    let tag = mac_raw(keys, name, &who, kid, time, &nonce, body);
    Ok(format!(
        "v1;k={kid};t={time};n={};m={};p={who}",
        hex(&nonce),
        hex(&tag)
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str, what: &'static str, len: usize) -> AuthResult<Vec<u8>> {
    let bad = || AuthError::BadSignature(format!("{what} is not {len} bytes of hex"));
    if text.len() != len * 2 || !text.is_ascii() {
        return Err(bad());
    }
    (0..len)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// The parts of a request's signature.
struct Signature {
    principal: Principal,
    kid: Kid,
    time: u64,
    nonce: [u8; NONCE],
    mac: Vec<u8>,
}

fn parse(value: &str) -> AuthResult<Signature> {
    let rest = value
        .strip_prefix("v1;")
        .ok_or_else(|| AuthError::BadSignature("unknown signature version".into()))?;
    let mut fields = rest.splitn(5, ';');
    let mut field = |name: &'static str| {
        fields
            .next()
            .and_then(|f| f.strip_prefix(name))
            .ok_or_else(|| AuthError::BadSignature(format!("no {name} field")))
    };
    let kid = Kid::from_bytes(&unhex(field("k=")?, "key id", KID_LEN)?)?;
    let time = field("t=")?
        .parse()
        .map_err(|_| AuthError::BadSignature("the time is not a number".into()))?;
    let mut nonce = [0u8; NONCE];
    nonce.copy_from_slice(&unhex(field("n=")?, "nonce", NONCE)?);
    let mac = unhex(field("m=")?, "mac", 32)?;
    let principal = field("p=")?.parse()?;
    Ok(Signature {
        principal,
        kid,
        time,
        nonce,
        mac,
    })
}

/// Nonces of recent requests: seen within the window, a nonce is a replay. Two generations,
/// each one window long, so every nonce is remembered for at least a window.
#[derive(Debug)]
pub struct ReplayCache {
    window: Duration,
    capacity: usize,
    inner: Mutex<Generations>,
}

#[derive(Debug)]
struct Generations {
    current: HashSet<[u8; NONCE]>,
    previous: HashSet<[u8; NONCE]>,
    started: Instant,
}

impl ReplayCache {
    /// Remembers nonces for at least `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> ReplayCache {
        ReplayCache {
            window,
            capacity,
            inner: Mutex::new(Generations {
                current: HashSet::new(),
                previous: HashSet::new(),
                started: Instant::now(),
            }),
        }
    }

    /// Records `nonce`; fails when it was seen within the window, or when the cache is full
    /// (more requests within a window than it holds: refuse, the client retries later).
    pub fn insert(&self, nonce: [u8; NONCE]) -> AuthResult<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.started.elapsed() >= self.window {
            inner.previous = std::mem::take(&mut inner.current);
            inner.started = Instant::now();
        }
        if inner.current.contains(&nonce) || inner.previous.contains(&nonce) {
            return Err(AuthError::Replayed);
        }
        if inner.current.len() + inner.previous.len() >= self.capacity {
            return Err(AuthError::ReplayCacheFull);
        }
        inner.current.insert(nonce);
        Ok(())
    }
}

/// Most nonces a master remembers: about 50 MB.
const REPLAY_CAPACITY: usize = 1_000_000;

/// Checks signed requests against the cluster secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    keyring: Arc<Keyring>,
    skew: Duration,
    replay: Arc<ReplayCache>,
}

impl Verifier {
    /// Accepts request times within `skew` of this clock.
    pub fn new(keyring: Arc<Keyring>, skew: Duration) -> Verifier {
        Verifier {
            keyring,
            skew,
            replay: Arc::new(ReplayCache::new(skew * 2, REPLAY_CAPACITY)),
        }
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Who signed `request`, after checking its MAC, its time and its nonce.
    pub fn verify<T: SignedRequest>(&self, request: &tonic::Request<T>) -> AuthResult<Principal> {
        let value = request
            .metadata()
            .get(AUTH_METADATA)
            .ok_or(AuthError::NoCredentials)?
            .to_str()
            .map_err(|_| AuthError::BadSignature("not ASCII".into()))?;
        self.verify_raw(value, T::NAME, &request.get_ref().encode_to_vec())
    }

    /// Who signed request `name` with `body`, its [`AUTH_METADATA`] value being `value` (see
    /// [`sign_raw`]).
    pub fn verify_raw(&self, value: &str, name: &str, body: &[u8]) -> AuthResult<Principal> {
        let signature = parse(value)?;
        let keys = self.keyring.keys_for(&signature.principal, signature.kid)?;
        let expected = mac_raw(
            &keys,
            name,
            &signature.principal.to_string(),
            signature.kid,
            signature.time,
            &signature.nonce,
            body,
        );
        if !super::constant_time_eq(&expected, &signature.mac) {
            return Err(AuthError::BadMac {
                principal: signature.principal.to_string(),
            });
        }
        let now = unix_ms(SystemTime::now());
        let off = now.abs_diff(signature.time);
        if off > self.skew.as_millis() as u64 {
            return Err(AuthError::Stale {
                off_ms: off,
                skew_ms: self.skew.as_millis() as u64,
            });
        }
        self.replay.insert(signature.nonce)?;
        Ok(signature.principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Arc<Keyring> {
        Arc::new(Keyring::parse("test", b"0123456789abcdef0123456789abcdef-grpc").unwrap())
    }

    fn request() -> pb::AppHeartbeatRequest {
        pb::AppHeartbeatRequest {
            app_id: "app-1".into(),
        }
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let keyring = keyring();
        let verifier = Verifier::new(keyring.clone(), Duration::from_secs(60));
        let me = Principal::App("app-1".into());
        let signing = keyring.signing();
        let keys = PrincipalKeys::app(signing.kid(), &signing.app_token("app-1"));
        let signed = sign(&me, &keys, request()).unwrap();
        assert_eq!(verifier.verify(&signed).unwrap(), me);
        // The same bytes again: a replay.
        assert!(matches!(verifier.verify(&signed), Err(AuthError::Replayed)));
    }

    #[test]
    fn changed_bodies_principals_and_keys_fail() {
        let keyring = keyring();
        let verifier = Verifier::new(keyring.clone(), Duration::from_secs(60));
        let signing = keyring.signing();
        let me = Principal::App("app-1".into());
        let keys = PrincipalKeys::app(signing.kid(), &signing.app_token("app-1"));

        let mut changed = sign(&me, &keys, request()).unwrap();
        changed.get_mut().app_id = "app-2".into();
        assert!(matches!(
            verifier.verify(&changed),
            Err(AuthError::BadMac { .. })
        ));

        // Claiming another application with this one's token.
        let other = sign(&Principal::App("app-2".into()), &keys, request()).unwrap();
        assert!(matches!(
            verifier.verify(&other),
            Err(AuthError::BadMac { .. })
        ));

        // A cluster principal with an application's keys.
        let forged = sign(&Principal::Master("0".into()), &keys, request()).unwrap();
        assert!(matches!(
            verifier.verify(&forged),
            Err(AuthError::BadMac { .. })
        ));

        let unsigned = tonic::Request::new(request());
        assert!(matches!(
            verifier.verify(&unsigned),
            Err(AuthError::NoCredentials)
        ));

        let mut garbage = tonic::Request::new(request());
        garbage
            .metadata_mut()
            .insert(AUTH_METADATA, "v1;k=zz".parse().unwrap());
        assert!(matches!(
            verifier.verify(&garbage),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn a_time_outside_the_skew_is_refused() {
        let keyring = keyring();
        let verifier = Verifier::new(keyring.clone(), Duration::from_secs(60));
        let me = Principal::Worker("w1".into());
        let keys = PrincipalKeys::cluster(keyring.signing());
        let old = unix_ms(SystemTime::now()) - 120_000;
        let nonce = [7u8; NONCE];
        let body = request().encode_to_vec();
        let name = pb::AppHeartbeatRequest::NAME;
        let tag = mac_raw(&keys, name, "worker:w1", keys.kid(), old, &nonce, &body);
        let mut stale = tonic::Request::new(request());
        let value = format!(
            "v1;k={};t={old};n={};m={};p=worker:w1",
            keys.kid(),
            hex(&nonce),
            hex(&tag)
        );
        stale
            .metadata_mut()
            .insert(AUTH_METADATA, value.parse().unwrap());
        assert!(matches!(
            verifier.verify(&stale),
            Err(AuthError::Stale { .. })
        ));
        let _ = me;
    }

    #[test]
    fn the_replay_cache_forgets_after_two_windows_and_bounds_its_size() {
        let cache = ReplayCache::new(Duration::from_millis(20), 4);
        cache.insert([1; NONCE]).unwrap();
        assert!(matches!(cache.insert([1; NONCE]), Err(AuthError::Replayed)));
        cache.insert([2; NONCE]).unwrap();
        cache.insert([3; NONCE]).unwrap();
        cache.insert([4; NONCE]).unwrap();
        assert!(matches!(
            cache.insert([6; NONCE]),
            Err(AuthError::ReplayCacheFull)
        ));
        // One window later the first generation is still remembered.
        std::thread::sleep(Duration::from_millis(25));
        cache.insert([5; NONCE]).unwrap_err();
        assert!(matches!(cache.insert([2; NONCE]), Err(AuthError::Replayed)));
        std::thread::sleep(Duration::from_millis(25));
        cache.insert([1; NONCE]).unwrap();
    }
}
