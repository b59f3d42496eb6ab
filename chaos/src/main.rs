//! `chaos`: runs fault-injection scenarios against a cluster of `sluice` processes and prints a
//! table, then one JSON line (the last line on stdout). Exits 0 only when every scenario passed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chaos::{Options, Scenario};
use clap::{CommandFactory, FromArgMatches, Parser};

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    about = "Fault injection against a real Sluice cluster"
)]
struct Cli {
    /// Run every scenario.
    #[arg(long)]
    all: bool,
    /// Run this scenario (repeatable); `NAME/R` runs only replication R. The help lists the
    /// names (`scenario_help`).
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// A worker config key for every worker (repeatable), `KEY=VALUE`; VALUE is a TOML value,
    /// and text that is not one is taken as a string (`--worker-setting memory_budget=1GiB`).
    #[arg(long = "worker-setting", value_name = "KEY=VALUE")]
    worker_settings: Vec<String>,
    /// The sluice binary (default: `sluice` next to this binary).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Small sizes.
    #[arg(long)]
    quick: bool,
    /// Run masters and workers with a cluster secret and TLS on every port, and authenticate
    /// and speak TLS on every connection of the harness (a secret and development certificates
    /// are made under the run directory).
    #[arg(long)]
    secure: bool,
    /// Directory for logs and data (default: a new directory under the system temp dir).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

/// The help of `--scenario`, naming every scenario `Scenario::ALL` holds, so it never misses one.
fn scenario_help() -> String {
    let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
    format!(
        "Run this scenario (repeatable): {}. `NAME/R` runs only replication R",
        names.join(", ")
    )
}

/// The command line's definition, with `--scenario`'s help built from the scenarios.
fn command() -> clap::Command {
    Cli::command().mut_arg("scenarios", |arg| arg.help(scenario_help()))
}

fn parse_cli() -> Cli {
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

fn runs(cli: &Cli) -> anyhow::Result<Vec<(Scenario, u32)>> {
    if cli.all {
        return Ok(Options::all_runs());
    }
    if cli.scenarios.is_empty() {
        anyhow::bail!("nothing to run: pass --all or --scenario NAME");
    }
    let mut runs = Vec::new();
    for arg in &cli.scenarios {
        let (name, replication) = match arg.split_once('/') {
            Some((name, r)) => (name, Some(r.parse::<u32>().context("replication")?)),
            None => (arg.as_str(), None),
        };
        let scenario = Scenario::from_name(name).with_context(|| {
            let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!("unknown scenario {name:?}; known: {}", names.join(", "))
        })?;
        match replication {
            Some(r) => runs.push((scenario, r)),
            None => runs.extend(scenario.replications().iter().map(|r| (scenario, *r))),
        }
    }
    Ok(runs)
}

/// `KEY=VALUE` as a key and a TOML value: numbers, booleans, arrays and quoted strings stay as
/// they are, anything else becomes a string.
fn worker_setting(arg: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = arg
        .split_once('=')
        .with_context(|| format!("--worker-setting {arg:?}: expected KEY=VALUE"))?;
    let literal = value.parse::<f64>().is_ok()
        || matches!(value, "true" | "false")
        || value.starts_with(['[', '"', '\'']);
    let value = if literal {
        value.to_string()
    } else {
        chaos::cluster::toml_text(value)
    };
    Ok((key.trim().replace('-', "_"), value))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match main_inner() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main_inner() -> anyhow::Result<ExitCode> {
    let cli = parse_cli();
    let runs = runs(&cli)?;
    let sluice = match &cli.sluice {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the chaos binary has no directory")?
            .join("sluice"),
    };
    let run_dir = match &cli.run_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "sluice-chaos-{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            std::process::id()
        )),
    };
    eprintln!("chaos: logs and data under {}", run_dir.display());
    let options = Options {
        quick: cli.quick,
        secure: cli.secure,
        worker_settings: cli
            .worker_settings
            .iter()
            .map(|s| worker_setting(s))
            .collect::<anyhow::Result<_>>()?,
        ..Options::new(sluice, run_dir, runs)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(chaos::run(&options))?;
    drop(runtime);
    print!("{}", report.table());
    println!("{}", report.json());
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_settings_are_toml_values_or_strings() {
        let setting = |arg: &str| worker_setting(arg).unwrap();
        assert_eq!(
            setting("max-connections=64"),
            ("max_connections".into(), "64".into())
        );
        assert_eq!(
            setting("memory_budget=1GiB"),
            ("memory_budget".into(), "\"1GiB\"".into())
        );
        assert_eq!(setting("fsync_on_commit=true").1, "true");
        assert_eq!(setting("data_dirs=[\"/a\"]").1, "[\"/a\"]");
        assert!(worker_setting("no-value").is_err());
    }

    #[test]
    fn the_help_names_every_scenario() {
        let help = command().render_help().to_string();
        for scenario in Scenario::ALL {
            assert!(
                help.contains(scenario.name()),
                "{} missing",
                scenario.name()
            );
        }
    }
}
