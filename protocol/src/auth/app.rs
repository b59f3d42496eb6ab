//! Application keys and tokens.
//!
//! - The client derives the **application key** from the application's secret (Spark's, or its
//!   own): `K_app = HMAC(secret, "sluice app key v1\0" || app id)`. It never leaves the client;
//!   the master sees only its [`verifier`], which binds the application id on first
//!   registration, so a second party cannot register the same id with another secret.
//! - The master answers with the application's **token**, `HMAC(wrap subkey of a cluster secret,
//!   "sluice app token v1\0" || app id)`. Every master and worker derives the same token from the
//!   cluster secret, so no key is stored or sent to workers. The token keys the application's
//!   data-plane sessions and signs its gRPC calls ([`PrincipalKeys::app`]).

use ring::{digest, hmac};

use super::{hmac as mac, ClusterKey, Kid, Secret};

/// Bytes of an application key, verifier and token.
pub const APP_KEY_LEN: usize = 32;

/// The application key of `app_id` under the application's `secret`.
pub fn app_key(secret: &Secret, app_id: &str) -> Secret {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose());
    Secret::new(mac(&key, &[b"sluice app key v1\0", app_id.as_bytes()]).to_vec())
}

/// What the master stores to recognise an application's key: a hash of it.
pub fn verifier(app_key: &Secret) -> [u8; APP_KEY_LEN] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"sluice app verifier v1\0");
    context.update(app_key.expose());
    let mut out = [0u8; APP_KEY_LEN];
    out.copy_from_slice(context.finish().as_ref());
    out
}

impl ClusterKey {
    /// The token of application `app_id` under this cluster secret.
    pub fn app_token(&self, app_id: &str) -> Secret {
        Secret::new(mac(self.wrap(), &[b"sluice app token v1\0", app_id.as_bytes()]).to_vec())
    }
}

impl super::Keyring {
    /// The keys `principal` is checked with under cluster key `kid` (a server's side of a
    /// session or a signed call): derived from the cluster secret for every principal.
    pub fn keys_for(
        &self,
        principal: &super::Principal,
        kid: Kid,
    ) -> super::AuthResult<PrincipalKeys> {
        let key = self.get(kid)?;
        Ok(match principal.app_id() {
            Some(app_id) => PrincipalKeys::app(kid, &key.app_token(app_id)),
            None => PrincipalKeys::cluster(key),
        })
    }
}

/// The keys one principal signs with (a client) or is checked with (a server): a data-plane
/// session key and a gRPC signing key, under cluster key `kid`.
#[derive(Clone)]
pub struct PrincipalKeys {
    kid: Kid,
    frames: hmac::Key,
    grpc: hmac::Key,
}

impl PrincipalKeys {
    /// The keys of a cluster principal (master, worker, admin).
    pub fn cluster(key: &ClusterKey) -> PrincipalKeys {
        PrincipalKeys {
            kid: key.kid(),
            frames: key.frames().clone(),
            grpc: key.grpc().clone(),
        }
    }

    /// The keys of an application holding `token`, derived under cluster key `kid`.
    pub fn app(kid: Kid, token: &Secret) -> PrincipalKeys {
        let root = hmac::Key::new(hmac::HMAC_SHA256, token.expose());
        let subkey = |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, &mac(&root, &[label]));
        PrincipalKeys {
            kid,
            frames: subkey(b"frames"),
            grpc: subkey(b"grpc"),
        }
    }

    pub fn kid(&self) -> Kid {
        self.kid
    }

    /// Keys data-plane sessions (`K_p` of a `Hello`).
    pub fn frames(&self) -> &hmac::Key {
        &self.frames
    }

    /// Signs gRPC requests.
    pub fn grpc(&self) -> &hmac::Key {
        &self.grpc
    }
}

impl std::fmt::Debug for PrincipalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Keyring;

    #[test]
    fn app_keys_depend_on_secret_and_app() {
        let a = Secret::new(b"secret-a".to_vec());
        let b = Secret::new(b"secret-b".to_vec());
        assert_eq!(app_key(&a, "app-1"), app_key(&a, "app-1"));
        assert_ne!(app_key(&a, "app-1"), app_key(&a, "app-2"));
        assert_ne!(app_key(&a, "app-1"), app_key(&b, "app-1"));
        assert_ne!(
            verifier(&app_key(&a, "app-1")),
            verifier(&app_key(&b, "app-1"))
        );
        assert_eq!(app_key(&a, "app-1").len(), APP_KEY_LEN);
    }

    #[test]
    fn tokens_are_the_same_on_every_holder_of_the_secret() {
        let text = b"0123456789abcdef0123456789abcdef-one\n";
        let one = Keyring::parse("one", text).unwrap();
        let two = Keyring::parse("two", text).unwrap();
        let other = Keyring::parse("other", b"fedcba9876543210fedcba9876543210-two\n").unwrap();
        let token = one.signing().app_token("app-1");
        assert_eq!(token, two.signing().app_token("app-1"));
        assert_ne!(token, one.signing().app_token("app-2"));
        assert_ne!(token, other.signing().app_token("app-1"));
    }
}
