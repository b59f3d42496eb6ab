//! Loading a process's configuration: a TOML file, then environment variables, then flags.
//!
//! Every key of the config struct can be set in all three places. An environment variable is
//! `<PREFIX><KEY>` in upper case (`SLUICE_WORKER_MEMORY_BUDGET=2GiB`); a flag is `--<key>` with
//! dashes or underscores (`--memory-budget 2GiB`). A key that the struct does not have is an
//! error naming it, wherever it comes from. Values from the environment and flags are read as
//! the type of the key: text for text keys, a TOML array or a comma-separated list for lists,
//! a TOML value (number, boolean) otherwise, falling back to text.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Settings given as flags: the config file, then `key = value` overrides in order.
pub type Flags = (Option<String>, Vec<(String, String)>);

/// Parses `--key value` / `--key=value` pairs; `--config FILE` is returned separately.
pub fn parse_flags(args: &[String]) -> anyhow::Result<Flags> {
    let mut config = None;
    let mut pairs = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            bail!("unexpected argument {arg:?}: settings are given as --key value");
        };
        let (key, value) = match flag.split_once('=') {
            Some((key, value)) => (key.to_string(), value.to_string()),
            None => {
                let value = args
                    .next()
                    .ok_or_else(|| anyhow!("flag --{flag} needs a value"))?;
                (flag.to_string(), value.clone())
            }
        };
        if key == "config" {
            config = Some(value);
        } else {
            pairs.push((key.replace('-', "_"), value));
        }
    }
    Ok((config, pairs))
}

/// Builds a `T` from an optional TOML file, environment variables starting with `env_prefix`,
/// and `flags` (already split into key/value pairs), in that order of precedence (flags win).
pub fn load<T>(
    file: Option<&Path>,
    env_prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[(String, String)],
) -> anyhow::Result<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    let defaults = toml::Table::try_from(T::default()).context("serializing defaults")?;
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(env_prefix))
        .collect();
    env.sort();
    for (name, value) in env {
        let key = name[env_prefix.len()..].to_ascii_lowercase();
        let Some(default) = defaults.get(&key) else {
            if is_service_link(&name, &value) {
                continue;
            }
            bail!("unknown environment variable {name}: there is no config key {key:?}");
        };
        table.insert(key, coerce(default, &value));
    }
    for (key, value) in flags {
        let default = defaults.get(key).ok_or_else(|| {
            anyhow!(
                "unknown flag --{}: there is no config key {key:?}",
                key.replace('_', "-")
            )
        })?;
        table.insert(key.clone(), coerce(default, value));
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| anyhow!("invalid configuration: {e}"))
}

/// Whether `name=value` is one of the variables the kubelet injects into every pod for each
/// Service of its namespace (unless `enableServiceLinks: false`): a Service `sluice-master`
/// yields `SLUICE_MASTER_SERVICE_HOST`, `SLUICE_MASTER_SERVICE_PORT[_<port name>]`,
/// `SLUICE_MASTER_PORT=tcp://10.0.0.1:9097` and `SLUICE_MASTER_PORT_9097_TCP[_PROTO|_PORT|_ADDR]`,
/// which share the config prefix without being settings. Only names that are no config key
/// get here, so a real key ending in `_PORT` is still read, and a misspelled key is still an
/// error unless it has exactly one of these shapes.
fn is_service_link(name: &str, value: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") {
        return true;
    }
    if let Some((_, rest)) = name.rsplit_once("_SERVICE_PORT") {
        if rest.is_empty() || rest.starts_with('_') {
            return true;
        }
    }
    let url = ["tcp://", "udp://", "sctp://"]
        .iter()
        .any(|scheme| value.starts_with(scheme));
    if name.ends_with("_PORT") && url {
        return true;
    }
    // `<NAME>_PORT_<number>_<PROTOCOL>` and its `_PROTO`, `_PORT`, `_ADDR` companions.
    name.split("_PORT_").skip(1).any(|tail| {
        let mut parts = tail.split('_');
        let number = parts.next().unwrap_or("");
        let protocol = parts.next().unwrap_or("");
        let suffix: Vec<&str> = parts.collect();
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && matches!(protocol, "TCP" | "UDP" | "SCTP")
            && matches!(suffix.as_slice(), [] | ["PROTO"] | ["PORT"] | ["ADDR"])
    })
}

/// Reads `text` as a value of the same kind as `like`.
fn coerce(like: &toml::Value, text: &str) -> toml::Value {
    let parsed = || {
        format!("v = {text}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match like {
        toml::Value::String(_) => toml::Value::String(text.to_string()),
        toml::Value::Array(_) => match parsed() {
            Some(array @ toml::Value::Array(_)) => array,
            _ => toml::Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
        },
        _ => parsed().unwrap_or_else(|| toml::Value::String(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sluice_worker::WorkerConfig;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_then_flags() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "memory_budget = \"64MiB\"\nmaster = \"10.0.0.1:1\"\nfsync_on_commit = true\ndata_dirs = [\"/a\"]"
        )
        .unwrap();
        let (config_path, flags) = parse_flags(&[
            "--master".into(),
            "127.0.0.1:2".into(),
            "--heartbeat-interval=250ms".into(),
            "--config".into(),
            file.path().display().to_string(),
        ])
        .unwrap();
        let config: WorkerConfig = load(
            config_path.as_deref().map(Path::new),
            "SLUICE_WORKER_",
            env(&[
                ("SLUICE_WORKER_MASTER", "127.0.0.1:3"),
                ("SLUICE_WORKER_DATA_DIRS", "/x,/y"),
                ("SLUICE_WORKER_ID", "123"),
                ("OTHER", "ignored"),
            ]),
            &flags,
        )
        .unwrap();
        assert_eq!(config.memory_budget.as_u64(), 64 << 20);
        assert_eq!(config.master, "127.0.0.1:2");
        assert!(config.fsync_on_commit);
        assert_eq!(config.data_dirs, vec![Path::new("/x"), Path::new("/y")]);
        assert_eq!(config.id, "123");
        assert_eq!(
            config.heartbeat_interval,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn a_worker_takes_its_masters_as_a_list_anywhere() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "master = [\"m1:9097\", \"m2:9097\"]").unwrap();
        let config: WorkerConfig =
            load(Some(file.path()), "SLUICE_WORKER_", env(&[]), &[]).unwrap();
        assert_eq!(config.master, "m1:9097,m2:9097");
        let config: WorkerConfig = load(
            Some(file.path()),
            "SLUICE_WORKER_",
            env(&[("SLUICE_WORKER_MASTER", "m1:1,m2:2,m3:3")]),
            &[],
        )
        .unwrap();
        assert_eq!(config.master, "m1:1,m2:2,m3:3");
        let (_, flags) = parse_flags(&["--master".into(), "m4:4, m5:5".into()]).unwrap();
        let config: WorkerConfig = load(None, "SLUICE_WORKER_", env(&[]), &flags).unwrap();
        assert_eq!(config.master, "m4:4, m5:5");
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_errors_naming_them() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "memroy_budget = \"1GiB\"").unwrap();
        let error = load::<WorkerConfig>(Some(file.path()), "SLUICE_WORKER_", env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("memroy_budget"), "{error}");

        let error = load::<WorkerConfig>(
            None,
            "SLUICE_WORKER_",
            env(&[("SLUICE_WORKER_BOGUS", "1")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("SLUICE_WORKER_BOGUS"), "{error}");

        let (_, flags) = parse_flags(&["--no-such-key".into(), "1".into()]).unwrap();
        let error = load::<WorkerConfig>(None, "SLUICE_WORKER_", env(&[]), &flags)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--no-such-key"), "{error}");
    }

    #[test]
    fn kubernetes_service_links_are_ignored_and_misspelled_keys_are_not() {
        let injected = env(&[
            // Service `sluice-master`, seen by a master and by a worker.
            ("SLUICE_MASTER_SERVICE_HOST", "10.0.0.1"),
            ("SLUICE_MASTER_SERVICE_PORT", "9097"),
            ("SLUICE_MASTER_SERVICE_PORT_GRPC", "9097"),
            ("SLUICE_MASTER_PORT", "tcp://10.0.0.1:9097"),
            ("SLUICE_MASTER_PORT_9097_TCP", "tcp://10.0.0.1:9097"),
            ("SLUICE_MASTER_PORT_9097_TCP_PROTO", "tcp"),
            ("SLUICE_MASTER_PORT_9097_TCP_PORT", "9097"),
            ("SLUICE_MASTER_PORT_9097_TCP_ADDR", "10.0.0.1"),
            // Service `sluice-worker` with named ports, and `sluice-worker-headless`.
            ("SLUICE_WORKER_SERVICE_HOST", "10.0.0.2"),
            ("SLUICE_WORKER_SERVICE_PORT_PUSH", "9098"),
            ("SLUICE_WORKER_SERVICE_PORT_FETCH", "9099"),
            ("SLUICE_WORKER_PORT", "tcp://10.0.0.2:9098"),
            ("SLUICE_WORKER_PORT_9098_TCP_ADDR", "10.0.0.2"),
            ("SLUICE_WORKER_PORT_9099_UDP", "udp://10.0.0.2:9099"),
            ("SLUICE_WORKER_HEADLESS_SERVICE_HOST", "10.0.0.3"),
        ]);
        let mut worker_env = injected.clone();
        worker_env.push(("SLUICE_WORKER_MASTER".into(), "sluice-master:9097".into()));
        worker_env.push(("SLUICE_WORKER_ADVERTISE_PUSH_PORT".into(), "30098".into()));
        let worker: WorkerConfig = load(None, "SLUICE_WORKER_", worker_env, &[]).unwrap();
        assert_eq!(worker.master, "sluice-master:9097");
        assert_eq!(worker.advertise_push_port, 30098);
        let master: sluice_master::MasterConfig =
            load(None, "SLUICE_MASTER_", injected, &[]).unwrap();
        assert_eq!(master, sluice_master::MasterConfig::default());

        // Misspelled keys, also ones ending like a service link, are still errors naming them.
        for (name, value) in [
            ("SLUICE_WORKER_ADVERTIZE_PUSH_PORT", "30098"),
            ("SLUICE_WORKER_PUSH_PORT", "9098"),
            ("SLUICE_WORKER_HEARTBEAT_INTERVALL", "1s"),
            ("SLUICE_WORKER_PORT_PUSH", "9098"),
            ("SLUICE_WORKER_PORT_9098_TCP_HOST", "x"),
        ] {
            let error = load::<WorkerConfig>(None, "SLUICE_WORKER_", env(&[(name, value)]), &[])
                .unwrap_err()
                .to_string();
            assert!(error.contains(name), "{name}: {error}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        let (_, flags) = parse_flags(&["--memory-budget".into(), "lots".into()]).unwrap();
        let error = load::<WorkerConfig>(None, "SLUICE_WORKER_", env(&[]), &flags)
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid configuration"), "{error}");
        assert!(parse_flags(&["--master".into()]).is_err());
        assert!(parse_flags(&["stray".into()]).is_err());
    }
}
