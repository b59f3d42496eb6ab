//! Cluster secrets: the [`Keyring`] read from `cluster_secret_file`, key ids and subkeys.

use std::path::Path;

use ring::{digest, hmac};

use super::{AuthError, AuthResult, Secret};

/// The shortest cluster secret accepted, in bytes (after trimming whitespace).
pub const MIN_SECRET_LEN: usize = 32;
/// Length of a [`Kid`].
pub const KID_LEN: usize = 4;

const KID_LABEL: &[u8] = b"sluice kid v1";

/// A cluster secret's key id: the first 4 bytes of `SHA-256("sluice kid v1" || secret)`.
/// Computed, never configured; it tells a verifier which secret of its keyring signed, and
/// reveals nothing usable about the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kid(pub [u8; KID_LEN]);

impl Kid {
    pub fn of(secret: &Secret) -> Kid {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(KID_LABEL);
        context.update(secret.expose());
        let digest = context.finish();
        let mut kid = [0u8; KID_LEN];
        kid.copy_from_slice(&digest.as_ref()[..KID_LEN]);
        Kid(kid)
    }

    /// A key id received from a peer (e.g. `HelloHeader.kid`).
    pub fn from_bytes(bytes: &[u8]) -> AuthResult<Kid> {
        let kid: [u8; KID_LEN] = bytes.try_into().map_err(|_| AuthError::BadLength {
            what: "key id",
            expected: KID_LEN,
            actual: bytes.len(),
        })?;
        Ok(Kid(kid))
    }

    pub fn as_bytes(&self) -> &[u8; KID_LEN] {
        &self.0
    }
}

impl std::fmt::Display for Kid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Kid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kid({self})")
    }
}

/// One cluster secret, as the subkeys derived from it. Each subkey is `HMAC(secret, label)` for
/// its own label, so a tag made for one purpose (frames, gRPC requests, application tokens) never
/// verifies for another. The secret itself is not kept.
pub struct ClusterKey {
    kid: Kid,
    frames: hmac::Key,
    grpc: hmac::Key,
    wrap: hmac::Key,
}

impl ClusterKey {
    pub fn new(secret: &Secret) -> ClusterKey {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret.expose());
        let subkey =
            |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, &super::hmac(&root, &[label]));
        ClusterKey {
            kid: Kid::of(secret),
            frames: subkey(b"frames"),
            grpc: subkey(b"grpc"),
            wrap: subkey(b"wrap"),
        }
    }

    pub fn kid(&self) -> Kid {
        self.kid
    }

    /// Keys data-plane sessions of cluster principals (`K_p` of a `Hello`).
    pub fn frames(&self) -> &hmac::Key {
        &self.frames
    }

    /// Signs gRPC requests of cluster principals.
    pub fn grpc(&self) -> &hmac::Key {
        &self.grpc
    }

    /// Derives application tokens ([`ClusterKey::app_token`]).
    pub fn wrap(&self) -> &hmac::Key {
        &self.wrap
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The cluster secrets a process holds: the first signs, every one verifies. Rotation appends
/// the new secret everywhere, moves it first, then drops the old one.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<ClusterKey>,
}

impl Keyring {
    /// Reads a secret file: one secret per line, each at least [`MIN_SECRET_LEN`] bytes after
    /// trimming whitespace; blank lines are ignored. Errors name the file and line, never the
    /// secret.
    pub fn load(path: &Path) -> AuthResult<Keyring> {
        let text = std::fs::read(path).map_err(|source| AuthError::ReadSecretFile {
            path: path.display().to_string(),
            source,
        })?;
        Keyring::parse(&path.display().to_string(), &text)
    }

    /// Parses the contents of a secret file; `path` only names it in errors.
    pub fn parse(path: &str, text: &[u8]) -> AuthResult<Keyring> {
        let mut keys: Vec<(usize, ClusterKey)> = Vec::new();
        for (index, line) in text.split(|&byte| byte == b'\n').enumerate() {
            let line_no = index + 1;
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            if trimmed.len() < MIN_SECRET_LEN {
                return Err(AuthError::ShortSecret {
                    path: path.to_string(),
                    line: line_no,
                    len: trimmed.len(),
                });
            }
            let key = ClusterKey::new(&Secret::new(trimmed));
            if let Some((first, _)) = keys.iter().find(|(_, other)| other.kid == key.kid) {
                return Err(AuthError::DuplicateKid {
                    path: path.to_string(),
                    line: line_no,
                    first: *first,
                    kid: key.kid,
                });
            }
            keys.push((line_no, key));
        }
        if keys.is_empty() {
            return Err(AuthError::NoSecret {
                path: path.to_string(),
            });
        }
        Ok(Keyring {
            keys: keys.into_iter().map(|(_, key)| key).collect(),
        })
    }

    /// The key that signs: the file's first secret.
    pub fn signing(&self) -> &ClusterKey {
        &self.keys[0]
    }

    /// The key with id `kid`, if this keyring holds it.
    pub fn get(&self, kid: Kid) -> AuthResult<&ClusterKey> {
        self.keys
            .iter()
            .find(|key| key.kid == kid)
            .ok_or_else(|| AuthError::UnknownKid(kid.to_string()))
    }

    /// Every key id, the signing one first.
    pub fn kids(&self) -> impl Iterator<Item = Kid> + '_ {
        self.keys.iter().map(ClusterKey::kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn the_first_secret_signs_and_every_secret_verifies() {
        let keyring = Keyring::parse("s", format!("\n  {A}  \r\n\n{B}\n").as_bytes()).unwrap();
        let (a, b) = (Kid::of(&Secret::new(A)), Kid::of(&Secret::new(B)));
        assert_eq!(keyring.signing().kid(), a);
        assert_eq!(keyring.kids().collect::<Vec<_>>(), [a, b]);
        assert_eq!(keyring.get(b).unwrap().kid(), b);
        assert!(matches!(
            keyring.get(Kid([0; KID_LEN])),
            Err(AuthError::UnknownKid(_))
        ));
    }

    #[test]
    fn kid_is_the_labelled_sha256_prefix() {
        let kid = Kid::of(&Secret::new(A));
        let digest = digest::digest(&digest::SHA256, format!("sluice kid v1{A}").as_bytes());
        assert_eq!(&kid.0[..], &digest.as_ref()[..KID_LEN]);
        assert_eq!(kid.to_string().len(), 2 * KID_LEN);
        assert_eq!(Kid::from_bytes(&kid.0).unwrap(), kid);
        assert!(Kid::from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn bad_files_are_refused_naming_the_line_and_never_the_secret() {
        let short = Keyring::parse("f", format!("{A}\nshort secret\n").as_bytes()).unwrap_err();
        assert!(matches!(
            short,
            AuthError::ShortSecret {
                line: 2,
                len: 12,
                ..
            }
        ));
        assert!(!short.to_string().contains("short secret"));
        let repeated = Keyring::parse("f", format!("{A}\n{B}\n {A}").as_bytes()).unwrap_err();
        assert!(matches!(
            repeated,
            AuthError::DuplicateKid {
                line: 3,
                first: 1,
                ..
            }
        ));
        assert!(!repeated.to_string().contains(A));
        assert!(matches!(
            Keyring::parse("f", b"\n \n"),
            Err(AuthError::NoSecret { .. })
        ));
        assert!(matches!(
            Keyring::load(Path::new("/nonexistent/sluice/secret")),
            Err(AuthError::ReadSecretFile { .. })
        ));
    }

    #[test]
    fn subkeys_differ_by_purpose_and_by_secret() {
        let a = ClusterKey::new(&Secret::new(A));
        let b = ClusterKey::new(&Secret::new(B));
        let tag = |key: &hmac::Key| super::super::hmac(key, &[b"message"]);
        let tags = [
            tag(a.frames()),
            tag(a.grpc()),
            tag(a.wrap()),
            tag(b.frames()),
        ];
        for (i, x) in tags.iter().enumerate() {
            for y in &tags[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // HMAC(secret, "frames"), keyed as an HMAC key in turn.
        let root = hmac::Key::new(hmac::HMAC_SHA256, A.as_bytes());
        let frames = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, b"frames").as_ref());
        assert_eq!(tag(a.frames()), tag(&frames));
        assert!(!format!("{a:?}").contains(A));
    }
}
