//! Who a session or a request speaks for.

use std::str::FromStr;

use super::AuthError;

/// Longest id a principal may carry (a worker id, a Raft id, an application id).
const MAX_ID_LEN: usize = 256;

/// Who a session or a request speaks for. Its text form (`master:<raft id>`, `worker:<id>`,
/// `admin`, `app:<app id>`) travels in `HelloHeader.principal` and gRPC metadata, and is bound
/// into every key derived for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A master, by its Raft id. Sends control frames (`Reserve`, `Commit`, `Destroy`).
    Master(String),
    /// A worker, by its worker id. Forwards replica pushes.
    Worker(String),
    /// The `sluice admin` tool.
    Admin,
    /// An application's driver or executors, keyed by the application's own key.
    App(String),
}

impl Principal {
    /// Whether this principal holds the cluster secret (master, worker, admin) rather than an
    /// application key.
    pub fn is_cluster(&self) -> bool {
        !matches!(self, Principal::App(_))
    }

    /// The application this principal speaks for, if it is one.
    pub fn app_id(&self) -> Option<&str> {
        match self {
            Principal::App(id) => Some(id),
            _ => None,
        }
    }
}

impl FromStr for Principal {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<Principal, AuthError> {
        let bad = |reason| AuthError::BadPrincipal {
            text: text.chars().take(MAX_ID_LEN + 16).collect(),
            reason,
        };
        if text == "admin" {
            return Ok(Principal::Admin);
        }
        let (role, id) = text
            .split_once(':')
            .ok_or_else(|| bad("expected master:<id>, worker:<id>, admin or app:<id>"))?;
        if id.is_empty() {
            return Err(bad("the id is empty"));
        }
        if id.len() > MAX_ID_LEN {
            return Err(bad("the id is longer than 256 bytes"));
        }
        if id.chars().any(char::is_control) {
            return Err(bad("the id contains a control character"));
        }
        let id = id.to_string();
        match role {
            "master" => Ok(Principal::Master(id)),
            "worker" => Ok(Principal::Worker(id)),
            "app" => Ok(Principal::App(id)),
            _ => Err(bad("unknown role: expected master, worker, admin or app")),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Master(id) => write!(f, "master:{id}"),
            Principal::Worker(id) => write!(f, "worker:{id}"),
            Principal::Admin => f.write_str("admin"),
            Principal::App(id) => write!(f, "app:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_role_parses_and_prints_back() {
        for (text, principal) in [
            ("master:1", Principal::Master("1".into())),
            ("worker:w-7", Principal::Worker("w-7".into())),
            ("admin", Principal::Admin),
            (
                "app:local-1700000000000",
                Principal::App("local-1700000000000".into()),
            ),
            ("app:a:b", Principal::App("a:b".into())),
        ] {
            assert_eq!(text.parse::<Principal>().unwrap(), principal);
            assert_eq!(principal.to_string(), text);
        }
        assert!(Principal::Admin.is_cluster() && Principal::Master("1".into()).is_cluster());
        assert!(!Principal::App("a".into()).is_cluster());
        assert_eq!(Principal::App("a".into()).app_id(), Some("a"));
    }

    #[test]
    fn malformed_principals_are_refused() {
        for text in [
            "", "admin:", "app:", "app", "root:1", "Master:1", "app:a\0b", "app:a\nb",
        ] {
            assert!(
                matches!(
                    text.parse::<Principal>(),
                    Err(AuthError::BadPrincipal { .. })
                ),
                "{text:?} parsed"
            );
        }
        let long = format!("app:{}", "x".repeat(MAX_ID_LEN + 1));
        assert!(long.parse::<Principal>().is_err());
    }

    proptest! {
        #[test]
        fn parse_inverts_display(role in 0usize..4, id in "[^\\p{Cc}]{1,64}") {
            let principal = match role {
                0 => Principal::Master(id),
                1 => Principal::Worker(id),
                2 => Principal::Admin,
                _ => Principal::App(id),
            };
            prop_assert_eq!(principal.to_string().parse::<Principal>().unwrap(), principal);
        }
    }
}
