//! The configuration reference as users meet it, through the `sluice` binary:
//!
//! - `docs/config.md` is what `sluice config-reference` prints now, so a key added, renamed,
//!   re-documented or given another default without regenerating the file fails here;
//! - `sluice master --help` and `sluice worker --help` name every key with its default, and
//!   `-h` names every key.

use std::path::Path;
use std::process::Command;

use sluice::reference::{self, Role, REGENERATE};

/// Runs `sluice <args>` and returns its standard output; fails the test on a non-zero exit.
fn sluice(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("the sluice binary runs");
    assert!(
        output.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
fn docs_config_md_is_what_config_reference_prints() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let printed = sluice(&["config-reference"]);
    assert_eq!(printed, reference::markdown().unwrap());
    if committed != printed {
        let line = committed
            .lines()
            .zip(printed.lines())
            .position(|(old, new)| old != new)
            .map_or_else(|| "its end".to_string(), |i| format!("line {}", i + 1));
        panic!(
            "docs/config.md is stale (first difference at {line}): a config key, default or doc \
             comment changed. Regenerate it from the repository root with\n\n    {REGENERATE}\n"
        );
    }
}

#[test]
fn help_lists_every_key_with_its_default() {
    for role in [Role::Master, Role::Worker] {
        let help = sluice(&[role.name(), "--help"]);
        assert!(help.contains(role.env_prefix()), "{help}");
        for key in role.keys().unwrap() {
            let default = key.default.expect("servers have a default for every key");
            let line = format!("  {} = {default}\n", key.name);
            assert!(help.contains(&line), "{line:?} missing from {help}");
        }
    }
    let worker = sluice(&["worker", "--help"]);
    assert!(worker.contains("  memory_budget = \""), "{worker}");
    assert!(worker.contains("Memory for partition buffers."), "{worker}");
    assert!(
        worker.contains("  admin_listen = \"0.0.0.0:9096\"\n"),
        "{worker}"
    );
    let master = sluice(&["master", "--help"]);
    assert!(
        master.contains("  admin_listen = \"0.0.0.0:9095\"\n"),
        "{master}"
    );

    let short = sluice(&["worker", "-h"]);
    for key in Role::Worker.keys().unwrap() {
        assert!(
            short.contains(&key.name),
            "{} missing from {short}",
            key.name
        );
    }
    assert!(short.contains("memory_budget"), "{short}");
}
