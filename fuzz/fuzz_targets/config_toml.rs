//! The worker's and the master's TOML configuration: `toml::from_str` then `validate()`, as a
//! config file is read. Neither panics, and a config that validates serializes to TOML that
//! reads back (the CLI serializes the defaults to learn the keys).
//!
//! Input: one byte choosing worker or master, then the file's text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_master::MasterConfig;
use sluice_worker::WorkerConfig;

fn check<T>(text: &str, validate: impl Fn(&T) -> Result<(), String>)
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let Ok(config) = toml::from_str::<T>(text) else {
        return;
    };
    if validate(&config).is_ok() {
        let written = toml::to_string(&config).expect("a valid config serializes");
        if let Err(e) = toml::from_str::<T>(&written) {
            panic!("a serialized config does not read back: {e}\n{written}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if which % 2 == 0 {
        check::<WorkerConfig>(text, WorkerConfig::validate);
    } else {
        check::<MasterConfig>(text, MasterConfig::validate);
    }
});
