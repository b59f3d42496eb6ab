//! The Grafana dashboard (`docker/grafana/sluice.json`) against a real Prometheus server.
//!
//! A `sluice local` cluster (one master, two workers) runs as a process, `sluice bench --verify`
//! loads it with its own client's metrics on an admin port, and Debian's `prometheus` binary
//! scrapes every admin port once a second into a temporary directory (the benchmark picks its
//! own port and joins the targets through a configuration reload). Then every query of every
//! panel, with Grafana's variables filled in, must return at least one series at a moment
//! during the load, and the panels the load moves must show it; the worker variable's query
//! must list both workers; every metric the dashboard names must be exported with a `# HELP`
//! line; and every `sluice_*` metric any process exports must have one.
//!
//! Without `/usr/bin/prometheus` the test fails, saying to install Debian's `prometheus`
//! package, unless `SLUICE_SKIP_PROMETHEUS_TESTS=1` is set. `SLUICE_PROMETHEUS` names another
//! binary.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/grafana/sluice.json");
const DEFAULT_PROMETHEUS: &str = "/usr/bin/prometheus";
/// How long `sluice local` and Prometheus may take to get ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long the benchmark may run (a debug build on a busy machine).
const BENCH_DEADLINE: Duration = Duration::from_secs(600);
/// Successful scrapes of the benchmark's client that the moment of the queries needs in the
/// minute before it, so that every `rate()` has samples to work on.
const MIN_BENCH_SCRAPES: f64 = 3.0;
/// What the dashboard's Grafana variables become in the queries sent to Prometheus.
const VARIABLES: [(&str, &str); 5] = [
    ("${worker}", ".*"),
    ("$worker", ".*"),
    ("$__rate_interval", "1m"),
    ("$__range", "5m"),
    ("$__interval", "15s"),
];
/// Panels the benchmark's load must move: each must show a positive value when its rate
/// window covers the whole benchmark.
const LOADED_PANELS: [&str; 10] = [
    "Push throughput",
    "Fetch throughput",
    "Replication and client throughput",
    "Push requests",
    "Fetch requests",
    "Push latency p50 / p99",
    "Fetch latency p50 / p99",
    "Flush latency p50 / p99",
    "Register latency p50 / p99",
    "Commit latency (master) p50 / p99",
];

/// A child process killed (SIGKILL) and reaped when dropped, also when a test panics.
struct Guarded {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Guarded {
    fn spawn(name: &'static str, command: &mut Command, dir: &Path) -> anyhow::Result<Guarded> {
        let log = dir.join(format!("{name}.log"));
        let stderr = File::create(&log)?;
        let stdout = File::create(dir.join(format!("{name}.out")))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Guarded { name, child, log })
    }

    /// `Some(status)` once the process has exited.
    fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The last lines of its stderr, to explain a failure.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- last lines of {} stderr ---\n{tail}", self.name)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A loopback port that was free a moment ago, for Prometheus, which cannot report a port it
/// chose itself.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percent-encodes `s` for a URL query string.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `GET http://addr/path`; returns the status code and the body.
fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    http_request("GET", addr, path)
}

/// A bodiless request over HTTP/1.0 (the server closes the connection after a whole,
/// unchunked body); returns the status code and the body.
fn http_request(method: &str, addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let socket = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("no address for {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8(response).context("a response that is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("a response without a blank line after its head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("a response without a status code: {head}"))?;
    Ok((status, body.to_string()))
}

/// Calls `check` until it gives `Some`, for at most `deadline`.
fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("{what}: not within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------------------------------
// The dashboard
// ------------------------------------------------------------------------------------------

/// One query of one panel.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

fn load_dashboard() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(DASHBOARD).context("reading the dashboard")?;
    serde_json::from_str(&text).context("the dashboard is not JSON")
}

/// Every panel's every query, with rows' nested panels; checks the panels' shape on the way.
fn dashboard_queries(dashboard: &Value) -> anyhow::Result<Vec<PanelQuery>> {
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        panels.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
    }
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_string();
        let id = panel["id"].as_u64().context("a panel without an id")?;
        ensure!(ids.insert(id), "panel id {id} is used twice");
        ensure!(panel["gridPos"].is_object(), "panel {title} has no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${DS_PROMETHEUS}",
            "panel {title} does not use the DS_PROMETHEUS data source"
        );
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        ensure!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("a query of panel {title} has no expr"))?;
            queries.push(PanelQuery {
                panel: title.clone(),
                ref_id: target["refId"].as_str().unwrap_or("?").to_string(),
                expr: expr.to_string(),
            });
        }
    }
    Ok(queries)
}

/// `expr` with the dashboard's Grafana variables replaced by what they stand for, and
/// `$__rate_interval` by `rate_interval` when given.
fn substitute(expr: &str, rate_interval: Option<&str>) -> String {
    let mut out = expr.to_string();
    if let Some(window) = rate_interval {
        out = out.replace("$__rate_interval", window);
    }
    for (variable, value) in VARIABLES {
        out = out.replace(variable, value);
    }
    out
}

/// Whether some series of `series` has a finite value above zero.
fn some_positive(series: &[Value]) -> bool {
    series.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v.is_finite() && v > 0.0)
    })
}

/// The `sluice_*` metric names in `expr` (a histogram's `_bucket` series named by the
/// histogram).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("sluice_") {
        let preceded_by_word = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            let name = &tail[..end];
            names.insert(name.strip_suffix("_bucket").unwrap_or(name).to_string());
        }
        rest = &tail[end..];
    }
    names
}

// ------------------------------------------------------------------------------------------
// The exposition text
// ------------------------------------------------------------------------------------------

/// What one `/metrics` text declares and exports.
#[derive(Default)]
struct Exposition {
    /// Metrics with a `# HELP` line.
    helped: BTreeSet<String>,
    /// Metrics with samples, a histogram's `_bucket`, `_sum` and `_count` named by the
    /// histogram.
    exported: BTreeSet<String>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut exposition = Exposition::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("HELP"), Some(name)) => {
                exposition.helped.insert(name.to_string());
            }
            (Some("#"), Some("TYPE"), Some(name)) => {
                types.insert(name.to_string(), words.next().unwrap_or("").to_string());
            }
            (Some(first), _, _) if !first.starts_with('#') => {
                let name = first.split('{').next().unwrap_or(first);
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find(|base| {
                        types
                            .get(*base)
                            .is_some_and(|t| t == "histogram" || t == "summary")
                    })
                    .unwrap_or(name);
                exposition.exported.insert(family.to_string());
            }
            _ => {}
        }
    }
    exposition
}

// ------------------------------------------------------------------------------------------
// Prometheus
// ------------------------------------------------------------------------------------------

struct Prometheus {
    addr: String,
    _process: Guarded,
}

impl Prometheus {
    /// Starts `binary` on a free loopback port with its storage under `dir`, and waits until it
    /// is ready. Tries a few ports: one free a moment ago may have been taken since.
    fn start(binary: &Path, config: &Path, dir: &Path) -> anyhow::Result<Prometheus> {
        let mut last_error = None;
        for attempt in 0..3 {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let storage = dir.join(format!("prometheus-data-{attempt}"));
            let mut process = Guarded::spawn(
                "prometheus",
                Command::new(binary)
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!("--storage.tsdb.path={}", storage.display()))
                    .arg(format!("--web.listen-address={addr}"))
                    .arg("--web.enable-lifecycle")
                    .arg("--log.level=warn"),
                dir,
            )?;
            let ready = wait_for("prometheus ready", READY_DEADLINE, || {
                if let Some(status) = process.exited()? {
                    return Ok(Some(Err(anyhow!(
                        "prometheus exited with {status}\n{}",
                        process.log_tail()
                    ))));
                }
                Ok(match http_get(&addr, "/-/ready") {
                    Ok((200, _)) => Some(Ok(())),
                    _ => None,
                })
            })?;
            match ready {
                Ok(()) => {
                    return Ok(Prometheus {
                        addr,
                        _process: process,
                    })
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("prometheus did not start")))
    }

    /// Reads the configuration file again (the lifecycle API).
    fn reload(&self) -> anyhow::Result<()> {
        let (status, body) = http_request("POST", &self.addr, "/-/reload")?;
        ensure!(
            status == 200,
            "reloading the configuration: HTTP {status}: {body}"
        );
        Ok(())
    }

    /// An instant query at `time` (Unix seconds): the result's series.
    fn query(&self, expr: &str, time: f64) -> anyhow::Result<Vec<Value>> {
        let path = format!("/api/v1/query?query={}&time={time:.3}", encode(expr));
        let (status, body) = http_get(&self.addr, &path)?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("HTTP {status}, not JSON: {body}"))?;
        ensure!(
            answer["status"] == "success",
            "HTTP {status}: {}: {}",
            answer["errorType"],
            answer["error"]
        );
        match &answer["data"]["result"] {
            Value::Array(series) => Ok(series.clone()),
            Value::Null => Ok(Vec::new()),
            // A scalar or a string: one value.
            other => Ok(vec![other.clone()]),
        }
    }

    /// The one value of an instant query that yields a single series, when it does.
    fn scalar(&self, expr: &str, time: f64) -> anyhow::Result<Option<f64>> {
        let series = self.query(expr, time)?;
        Ok(series
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok()))
    }

    /// `label_values(metric, label)`, as Grafana's variable query asks it.
    fn label_values(&self, metric: &str, label: &str) -> anyhow::Result<Vec<String>> {
        let path = format!(
            "/api/v1/label/{label}/values?{}={}",
            encode("match[]"),
            encode(metric)
        );
        let (status, body) = http_get(&self.addr, &path)?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("HTTP {status}, not JSON: {body}"))?;
        ensure!(answer["status"] == "success", "HTTP {status}: {body}");
        Ok(answer["data"]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The scrape configuration: every admin port once a second, by job.
fn prometheus_config(jobs: &[(&str, Vec<String>)]) -> String {
    let mut yaml = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (job, targets) in jobs {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        yaml.push_str(&format!(
            "  - job_name: '{job}'\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ));
    }
    yaml
}

fn prometheus_binary() -> Option<PathBuf> {
    let binary = std::env::var_os("SLUICE_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PROMETHEUS));
    if binary.exists() {
        return Some(binary);
    }
    if std::env::var("SLUICE_SKIP_PROMETHEUS_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "skipping: {} is missing and SLUICE_SKIP_PROMETHEUS_TESTS=1",
            binary.display()
        );
        return None;
    }
    panic!(
        "{} is missing: install Debian's `prometheus` package (apt-get install prometheus), \
         or set SLUICE_PROMETHEUS to a prometheus binary, or SLUICE_SKIP_PROMETHEUS_TESTS=1 to \
         skip this test",
        binary.display()
    );
}

// ------------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------------

/// The addresses `sluice local` prints when ready.
struct LocalAddrs {
    master: String,
    master_admins: Vec<String>,
    worker_admins: Vec<String>,
}

fn start_local(dir: &Path) -> anyhow::Result<(Guarded, LocalAddrs)> {
    let mut local = Guarded::spawn(
        "local",
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["local", "--workers", "2", "--data-dir"])
            .arg(dir.join("cluster")),
        dir,
    )?;
    let out = dir.join("local.out");
    let line = wait_for("sluice local ready", READY_DEADLINE, || {
        if let Some(status) = local.exited()? {
            bail!("sluice local exited with {status}\n{}", local.log_tail());
        }
        let text = std::fs::read_to_string(&out)?;
        Ok(text.split_once('\n').map(|(line, _)| line.to_string()))
    })?;
    let ready: Value = serde_json::from_str(&line).context("the ready line is not JSON")?;
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let addrs = LocalAddrs {
        master: ready["master"]
            .as_str()
            .context("no master in the ready line")?
            .to_string(),
        master_admins: strings(&ready["admin"]),
        worker_admins: ready["workers"]
            .as_array()
            .context("no workers in the ready line")?
            .iter()
            .filter_map(|w| w["admin"].as_str().map(String::from))
            .collect(),
    };
    ensure!(
        addrs.master_admins.len() == 1 && addrs.worker_admins.len() == 2,
        "admin ports missing from the ready line: {line}"
    );
    Ok((local, addrs))
}

/// The moment of the queries: the latest, at or before `end`, when every target's last scrape
/// succeeded (the benchmark's client was still serving its metrics).
fn query_moment(prometheus: &Prometheus, targets: usize, end: f64) -> anyhow::Result<f64> {
    for step in 0..40 {
        let time = end - f64::from(step) * 0.25;
        if prometheus.scalar("count(up == 1)", time)? == Some(targets as f64) {
            return Ok(time);
        }
    }
    bail!("no moment before the benchmark ended when all {targets} targets were up")
}

#[test]
fn every_dashboard_query_returns_data_from_prometheus() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    if let Err(e) = run(&binary) {
        panic!("{e:#}");
    }
}

fn run(binary: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let dashboard = load_dashboard()?;
    let queries = dashboard_queries(&dashboard)?;
    let variable = dashboard["templating"]["list"]
        .as_array()
        .and_then(|list| list.iter().find(|v| v["name"] == "worker"))
        .context("no worker variable")?;
    ensure!(
        variable["definition"] == "label_values(sluice_worker_state, worker)",
        "the worker variable's query changed: {}",
        variable["definition"]
    );

    let dir = tempfile::tempdir()?;
    let (_local, addrs) = start_local(dir.path())?;
    let mut jobs = vec![
        ("sluice-master", addrs.master_admins.clone()),
        ("sluice-worker", addrs.worker_admins.clone()),
    ];
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&jobs))?;
    let prometheus = Prometheus::start(binary, &config, dir.path())?;

    // The cluster's counters are stored at zero before the load moves them, so that rates see
    // the load's first steps (the shuffle's registration) too.
    wait_for("a first scrape of the cluster", READY_DEADLINE, || {
        let up = prometheus.scalar("count(up == 1)", now_secs())?;
        Ok((up == Some(3.0)).then_some(()))
    })?;
    let bench_start = now_secs();
    let mut bench = Guarded::spawn(
        "bench",
        Command::new(env!("CARGO_BIN_EXE_sluice")).args([
            "bench",
            "--master",
            &addrs.master,
            "--admin-listen",
            "127.0.0.1:0",
            "--verify",
            "--maps",
            "8",
            "--partitions",
            "16",
            "--bytes-per-map",
            // Long enough that the client is scraped at least MIN_BENCH_SCRAPES times after it
            // joins the targets: at 16 MiB a fast run once ended after two scrapes.
            "64MiB",
            "--loopback-bytes",
            "0",
        ]),
        dir.path(),
    )?;
    // The benchmark's client joins the scrape targets once it has said where it serves.
    let bench_admin = wait_for("the benchmark's admin port", READY_DEADLINE, || {
        if let Some(status) = bench.exited()? {
            bail!(
                "the benchmark exited ({status}) before serving its metrics\n{}",
                bench.log_tail()
            );
        }
        let log = std::fs::read_to_string(&bench.log)?;
        Ok(log.lines().find_map(|line| {
            line.strip_prefix("client metrics on http://")
                .and_then(|rest| rest.strip_suffix("/metrics"))
                .map(String::from)
        }))
    })?;
    jobs.push(("sluice-bench", vec![bench_admin]));
    let targets: Vec<String> = jobs.iter().flat_map(|(_, t)| t.clone()).collect();
    std::fs::write(&config, prometheus_config(&jobs))?;
    prometheus.reload()?;
    wait_for("a first scrape of the benchmark", READY_DEADLINE, || {
        if let Some(status) = bench.exited()? {
            bail!(
                "the benchmark exited ({status}) before Prometheus scraped it\n{}",
                bench.log_tail()
            );
        }
        let up = prometheus.scalar("count(up == 1)", now_secs())?;
        Ok((up == Some(targets.len() as f64)).then_some(()))
    })?;
    // Every process's exposition, read while the benchmark runs.
    let mut expositions = BTreeMap::new();
    for target in &targets {
        let (status, text) = http_get(target, "/metrics")?;
        ensure!(status == 200, "{target}/metrics answered {status}");
        expositions.insert(target.clone(), parse_exposition(&text));
    }
    let status = wait_for("the benchmark", BENCH_DEADLINE, || bench.exited())?;
    let bench_end = now_secs();
    // A rate window that holds the whole benchmark, for the panels its load must move.
    let load_window = format!("{}s", (bench_end - bench_start).ceil() as u64 + 10);
    ensure!(
        status.success(),
        "the benchmark failed ({status})\n{}",
        bench.log_tail()
    );
    // Whatever was scraped up to the end is stored once a scrape after it has come back.
    let settled = bench_end + 2.5;
    wait_for("a scrape after the benchmark", READY_DEADLINE, || {
        Ok((now_secs() > settled).then_some(()))
    })?;
    let time = query_moment(&prometheus, targets.len(), bench_end)?;
    let scrapes = prometheus
        .scalar("sum_over_time(up{job=\"sluice-bench\"}[1m])", time)?
        .unwrap_or(0.0);
    ensure!(
        scrapes >= MIN_BENCH_SCRAPES,
        "the benchmark's client was scraped {scrapes} times under load, rates need {MIN_BENCH_SCRAPES}"
    );

    let mut problems = Vec::new();

    // The worker variable lists both workers.
    let workers = prometheus.label_values("sluice_worker_state", "worker")?;
    if workers.len() != 2 {
        problems.push(format!(
            "label_values(sluice_worker_state, worker) gave {workers:?}, not the two workers"
        ));
    }

    // Every panel's every query.
    println!("{:<42} {:<4} {:>6}  first value", "panel", "ref", "series");
    for query in &queries {
        let expr = substitute(&query.expr, None);
        match prometheus.query(&expr, time) {
            Ok(series) => {
                let first = series
                    .first()
                    .and_then(|s| s["value"][1].as_str())
                    .unwrap_or("-");
                println!(
                    "{:<42} {:<4} {:>6}  {first}",
                    query.panel,
                    query.ref_id,
                    series.len()
                );
                if series.is_empty() {
                    problems.push(format!(
                        "panel {:?} query {}: no data: {expr}",
                        query.panel, query.ref_id
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "panel {:?} query {}: {e:#}: {expr}",
                query.panel, query.ref_id
            )),
        }
    }

    // The panels the load must move show it.
    for query in queries
        .iter()
        .filter(|q| LOADED_PANELS.contains(&q.panel.as_str()))
    {
        let expr = substitute(&query.expr, Some(&load_window));
        match prometheus.query(&expr, time) {
            Ok(series) if some_positive(&series) => {}
            Ok(series) => problems.push(format!(
                "panel {:?} query {}: nothing above zero under load ({} series): {expr}",
                query.panel,
                query.ref_id,
                series.len()
            )),
            Err(e) => problems.push(format!(
                "panel {:?} query {}: {e:#}: {expr}",
                query.panel, query.ref_id
            )),
        }
    }
    for title in LOADED_PANELS {
        if !queries.iter().any(|q| q.panel == title) {
            problems.push(format!("no panel {title:?}"));
        }
    }

    // Every metric the dashboard names is exported with a `# HELP` line.
    let helped: BTreeSet<&String> = expositions.values().flat_map(|e| &e.helped).collect();
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(&q.expr)).collect();
    for name in &used {
        if !helped.contains(name) {
            problems.push(format!(
                "the dashboard uses {name}, which no process exports with a # HELP line"
            ));
        }
    }
    // Every exported `sluice_*` metric has a `# HELP` line.
    for (target, exposition) in &expositions {
        for name in &exposition.exported {
            if name.starts_with("sluice_") && !exposition.helped.contains(name) {
                problems.push(format!("{target}/metrics exports {name} without # HELP"));
            }
        }
    }

    let panels: BTreeSet<&String> = queries.iter().map(|q| &q.panel).collect();
    println!(
        "{} panels, {} queries, {} metric names, {} targets; {:.1}s",
        panels.len(),
        queries.len(),
        used.len(),
        targets.len(),
        started.elapsed().as_secs_f64()
    );
    ensure!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}

#[test]
fn metric_names_are_found_in_queries() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(sluice_worker_push_latency_seconds_bucket{worker=~\"$worker\"}[1m]))) / x_sluice_other",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["sluice_worker_push_latency_seconds"]
    );
}

#[test]
fn expositions_name_histograms_by_family() {
    let exposition = parse_exposition(
        "# HELP sluice_a_seconds A.\n# TYPE sluice_a_seconds histogram\n\
         sluice_a_seconds_bucket{le=\"1\"} 0\nsluice_a_seconds_sum 0\nsluice_a_seconds_count 0\n\
         # TYPE sluice_b_total counter\nsluice_b_total{x=\"y\"} 3\n",
    );
    assert_eq!(
        exposition.exported.into_iter().collect::<Vec<_>>(),
        ["sluice_a_seconds", "sluice_b_total"]
    );
    assert_eq!(
        exposition.helped.into_iter().collect::<Vec<_>>(),
        ["sluice_a_seconds"]
    );
}
