//! The `sluice` binary's configuration loading (cli/src/config.rs): `parse_flags` on the
//! command line, then `load` merging a TOML file, environment variables and flags, then the
//! config's `validate()`. No input makes any of them panic.
//!
//! Input (UTF-8): one character choosing worker or master, then three parts separated by NUL:
//! the config file's text, environment lines `KEY=value` (given the process's prefix), and
//! command-line arguments, one per line.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::config;
use sluice_master::MasterConfig;
use sluice_worker::WorkerConfig;

/// Where the config file is written; in memory where the machine has /dev/shm.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("sluice-fuzz-config-{}.toml", std::process::id()))
    })
}

fn run<T>(
    prefix: &str,
    file: &str,
    env: &str,
    args: &str,
    validate: impl Fn(&T) -> Result<(), String>,
) where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    let args: Vec<String> = args.lines().map(str::to_string).collect();
    let Ok((_, flags)) = config::parse_flags(&args) else {
        return;
    };
    let env = env.lines().map(|line| match line.split_once('=') {
        Some((key, value)) => (format!("{prefix}{key}"), value.to_string()),
        None => (line.to_string(), String::new()),
    });
    let file = if file.is_empty() {
        None
    } else {
        std::fs::write(config_path(), file).expect("writing the config file");
        Some(config_path().as_path())
    };
    if let Ok(config) = config::load::<T>(file, prefix, env, &flags) {
        let _ = validate(&config);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut chars = text.chars();
    let Some(which) = chars.next() else {
        return;
    };
    let mut parts = chars.as_str().splitn(3, '\0');
    let file = parts.next().unwrap_or("");
    let env = parts.next().unwrap_or("");
    let args = parts.next().unwrap_or("");
    if u32::from(which) % 2 == 0 {
        run::<WorkerConfig>("SLUICE_WORKER_", file, env, args, WorkerConfig::validate);
    } else {
        run::<MasterConfig>("SLUICE_MASTER_", file, env, args, MasterConfig::validate);
    }
});
