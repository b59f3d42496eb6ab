//! `sluice admin`: operating a running cluster.
//!
//! - `masters`: the masters' Raft view, and adding or removing a master (gRPC).
//! - `workers`, `shuffles`, `apps`: the leading master's view, from the JSON of its admin port
//!   (the admin addresses given are tried in turn until the leader answers), as aligned tables
//!   or, with `--json`, the JSON itself.
//! - `decommission`: through the leader (`WORKER_ID --master ADMIN_ADDRS`) or on the worker's
//!   own admin port (`--worker ADDR`, the form a Kubernetes preStop hook uses).
//! - `config`: the effective configuration of any process, from its admin port.

use anyhow::{anyhow, bail, Context};
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use tonic::transport::Channel;

/// A gRPC client of the master at `addr`, with TLS when `--tls-ca-file` was given.
async fn connect(addr: &str) -> anyhow::Result<MasterClient<Channel>> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .with_context(|| format!("master address {addr:?}"))?
        .connect_timeout(std::time::Duration::from_secs(3));
    let channel = match crate::http::default_tls() {
        Some(tls) => {
            endpoint
                .connect_with_connector(sluice_protocol::tls::TlsConnector::new(tls))
                .await
        }
        None => endpoint.connect().await,
    };
    Ok(MasterClient::new(
        channel.with_context(|| format!("connecting to master {addr}"))?,
    ))
}

fn endpoints(masters: &str) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = masters
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        bail!("--master names no master");
    }
    Ok(list)
}

/// Every reachable master's own view, as `(endpoint, view or error)`.
pub async fn statuses(
    masters: &str,
) -> anyhow::Result<Vec<(String, Result<pb::MasterStatusResponse, String>)>> {
    let mut out = Vec::new();
    for addr in endpoints(masters)? {
        let status = match connect(&addr).await {
            Ok(mut client) => client
                .master_status(crate::http::signed(pb::MasterStatusRequest {})?)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        out.push((addr, status));
    }
    Ok(out)
}

/// The leader's address, as the first master that knows it says.
async fn leader(masters: &str) -> anyhow::Result<String> {
    for (_, status) in statuses(masters).await? {
        if let Some(leader) = status.ok().and_then(|s| s.leader) {
            return Ok(leader.addr);
        }
    }
    Err(anyhow!("no master of {masters} knows a leader"))
}

fn name(node: Option<&pb::MasterNode>) -> String {
    node.map_or_else(|| "-".into(), |n| format!("{} {}", n.id, n.addr))
}

/// Prints each master's view, one row per endpoint, or JSON.
pub async fn print_status(masters: &str, json: bool) -> anyhow::Result<()> {
    let statuses = statuses(masters).await?;
    if json {
        let rows: Vec<serde_json::Value> = statuses
            .iter()
            .map(|(addr, status)| match status {
                Ok(s) => serde_json::json!({
                    "endpoint": addr,
                    "id": s.self_.as_ref().map(|n| n.id),
                    "leader": s.leader.as_ref().map(|n| &n.addr),
                    "term": s.term,
                    "last_applied": s.last_applied,
                    "voters": s.voters.iter().map(|n| serde_json::json!({"id": n.id, "addr": n.addr})).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(|n| serde_json::json!({"id": n.id, "addr": n.addr})).collect::<Vec<_>>(),
                }),
                Err(e) => serde_json::json!({ "endpoint": addr, "error": e }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<24} {:<4} {:<8} {:<28} {:>6} {:>12}  VOTERS",
        "ENDPOINT", "ID", "ROLE", "LEADER", "TERM", "APPLIED"
    );
    for (addr, status) in statuses {
        match status {
            Ok(s) => {
                let id = s.self_.as_ref().map_or(u64::MAX, |n| n.id);
                let role = match s.leader.as_ref().map(|l| l.id) {
                    Some(l) if l == id => "leader",
                    Some(_) => "follower",
                    None => "candidate",
                };
                let voters: Vec<String> = s.voters.iter().map(|n| n.id.to_string()).collect();
                println!(
                    "{addr:<24} {id:<4} {role:<8} {:<28} {:>6} {:>12}  {}",
                    name(s.leader.as_ref()),
                    s.term,
                    s.last_applied,
                    voters.join(",")
                );
            }
            Err(e) => println!("{addr:<24} unreachable: {e}"),
        }
    }
    Ok(())
}

/// Adds master `id` at `addr` (it must be running, started with the same peers plus itself),
/// or removes master `id`, through the leader.
pub async fn change(
    masters: &str,
    add: Option<(u64, String)>,
    remove: Option<u64>,
) -> anyhow::Result<()> {
    let leader = leader(masters).await?;
    let mut client = connect(&leader).await?;
    let request = pb::ChangeMastersRequest {
        add: add
            .into_iter()
            .map(|(id, addr)| pb::MasterNode { id, addr })
            .collect(),
        remove: remove.into_iter().collect(),
    };
    let status = client
        .change_masters(crate::http::signed(request)?)
        .await
        .map_err(|s| anyhow!("leader {leader} refused: {}", s.message()))?
        .into_inner();
    let voters: Vec<String> = status
        .voters
        .iter()
        .map(|n| format!("{} {}", n.id, n.addr))
        .collect();
    println!("voters now: {}", voters.join(", "));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The admin ports (HTTP JSON)
// ---------------------------------------------------------------------------------------------

/// The master admin address `sluice admin` uses when given none.
pub const DEFAULT_MASTER_ADMIN: &str = "127.0.0.1:9095";

/// GETs (or POSTs) `path` from the first of the comma-separated master admin addresses that
/// leads; returns the answer (any status but 503) and the address that gave it. A follower's
/// 503 and unreachable masters are skipped; when none answers, the error lists why per address.
async fn on_leader(
    admins: &str,
    path: &str,
    post: bool,
) -> anyhow::Result<(String, crate::http::Answer)> {
    let mut reasons = Vec::new();
    for addr in endpoints(admins)? {
        let answer = match post {
            true => crate::http::post(&addr, path).await,
            false => crate::http::get(&addr, path).await,
        };
        match answer {
            Ok(answer) if answer.status == hyper::StatusCode::SERVICE_UNAVAILABLE => {
                let leader = answer.json()["leader"].as_str().map(String::from);
                reasons.push(match leader {
                    Some(leader) => format!(
                        "{addr}: not the leader (the leader's gRPC address is {leader}; \
                         pass its admin address too)"
                    ),
                    None => format!("{addr}: {}", answer.error_message()),
                });
            }
            Ok(answer) => return Ok((addr, answer)),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    bail!("no leading master answered:\n  {}", reasons.join("\n  "))
}

/// The leader's JSON at `path`, failing on any status but 200.
async fn leader_json(admins: &str, path: &str) -> anyhow::Result<(String, crate::http::Answer)> {
    let (addr, answer) = on_leader(admins, path, false).await?;
    if !answer.status.is_success() {
        bail!("{addr}{path}: {}", answer.error_message());
    }
    Ok((addr, answer))
}

/// Bytes, in binary units.
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n.max(0.0);
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{value:.0} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// A duration in milliseconds, short.
fn human_age(ms: u64) -> String {
    let seconds = ms as f64 / 1000.0;
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        format!("{:.1}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

/// Rows printed with aligned columns: text to the left, numbers (columns named in `right`) to
/// the right.
pub fn table(headers: &[&str], right: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (value, width)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = width.saturating_sub(value.chars().count());
            if right.contains(&headers[i]) {
                out.push_str(&" ".repeat(pad));
                out.push_str(value);
            } else {
                out.push_str(value);
                if i + 1 < cells.len() {
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) if s.is_empty() => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn number(value: &serde_json::Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

fn list<'a>(value: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    value[key].as_array().map_or(&[], Vec::as_slice)
}

/// The workers table of `/api/workers`.
pub fn workers_table(json: &serde_json::Value) -> String {
    let rows: Vec<Vec<String>> = list(json, "workers")
        .iter()
        .map(|w| {
            let disks = list(w, "disks");
            let used: f64 = disks.iter().map(|d| number(&d["used_bytes"])).sum();
            let capacity: f64 = disks.iter().map(|d| number(&d["capacity_bytes"])).sum();
            let place = [text(&w["node"]), text(&w["zone"])].join("/");
            vec![
                text(&w["id"]),
                text(&w["state"]),
                format!("{}:{}", text(&w["host"]), text(&w["push_port"])),
                text(&w["admin"]),
                place,
                format!("{}/{}", human_bytes(used), human_bytes(capacity)),
                format!(
                    "{}/{}",
                    human_bytes(number(&w["memory"]["used_bytes"])),
                    human_bytes(number(&w["memory"]["budget_bytes"]))
                ),
                text(&w["partitions"]),
                format!("{}/s", human_bytes(number(&w["push_bytes_per_sec"]))),
                format!("{}/s", human_bytes(number(&w["fetch_bytes_per_sec"]))),
                human_age(w["last_heartbeat_ms"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    let headers = [
        "ID",
        "STATE",
        "PUSH ADDR",
        "ADMIN",
        "NODE/ZONE",
        "DISK USED/CAP",
        "MEMORY",
        "PARTITIONS",
        "PUSH",
        "FETCH",
        "HEARTBEAT",
    ];
    let right = ["PARTITIONS", "PUSH", "FETCH", "HEARTBEAT"];
    table(&headers, &right, &rows)
}

/// The shuffles table of `/api/shuffles`.
pub fn shuffles_table(json: &serde_json::Value) -> String {
    let rows: Vec<Vec<String>> = list(json, "shuffles")
        .iter()
        .map(|s| {
            vec![
                text(&s["app"]),
                text(&s["shuffle_id"]),
                text(&s["state"]),
                format!("{}/{}", text(&s["maps_done"]), text(&s["maps"])),
                human_bytes(number(&s["bytes_written"])),
                text(&s["partitions"]),
                format!("{}/{}", text(&s["max_epoch"]), text(&s["revives"])),
                text(&s["replication"]),
                text(&s["lost_partitions"]),
            ]
        })
        .collect();
    let headers = [
        "APP",
        "SHUFFLE",
        "STATE",
        "MAPS DONE",
        "BYTES",
        "PARTITIONS",
        "EPOCHS MAX/REVIVED",
        "REPLICATION",
        "LOST",
    ];
    let right = [
        "SHUFFLE",
        "MAPS DONE",
        "BYTES",
        "PARTITIONS",
        "EPOCHS MAX/REVIVED",
        "REPLICATION",
        "LOST",
    ];
    let mut out = table(&headers, &right, &rows);
    let (shown, total) = (rows.len() as u64, json["total"].as_u64().unwrap_or(0));
    if total > shown {
        out.push_str(&format!("\n({shown} of {total} shuffles shown)"));
    }
    out
}

/// The applications table of `/api/apps`.
pub fn apps_table(json: &serde_json::Value) -> String {
    let rows: Vec<Vec<String>> = list(json, "apps")
        .iter()
        .map(|a| {
            vec![
                text(&a["id"]),
                text(&a["shuffles"]),
                human_age(a["last_heartbeat_ms"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    let headers = ["APP", "SHUFFLES", "LAST HEARTBEAT"];
    table(&headers, &["SHUFFLES", "LAST HEARTBEAT"], &rows)
}

/// What `sluice admin workers|shuffles|apps` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Workers,
    Shuffles,
    Apps,
}

/// Prints the leader's workers, shuffles or applications: a table, or the JSON as served.
pub async fn print_listing(admins: &str, listing: Listing, json: bool) -> anyhow::Result<()> {
    let path = match listing {
        Listing::Workers => "/api/workers",
        Listing::Shuffles => "/api/shuffles",
        Listing::Apps => "/api/apps",
    };
    let (_, answer) = leader_json(admins, path).await?;
    if json {
        println!("{}", answer.body.trim_end());
        return Ok(());
    }
    let value = answer.json();
    let table = match listing {
        Listing::Workers => workers_table(&value),
        Listing::Shuffles => shuffles_table(&value),
        Listing::Apps => apps_table(&value),
    };
    println!("{table}");
    Ok(())
}

/// The query asking for a drain within `deadline`.
fn deadline_query(deadline: Option<std::time::Duration>) -> String {
    match deadline {
        Some(d) => format!("?deadline={}ms", d.as_millis()),
        None => String::new(),
    }
}

/// What a decommissioned worker does next.
fn leaving(deadline: Option<std::time::Duration>) -> String {
    match deadline {
        Some(d) => format!(
            "it drains within {}: hands over what no other copy outlives, reports the rest lost, then exits",
            humantime::format_duration(d)
        ),
        None => "it takes no new partitions and keeps serving what it holds".into(),
    }
}

/// Decommissions worker `id` through the leading master of `admins`, draining it within
/// `deadline` when given.
pub async fn decommission_through_master(
    admins: &str,
    id: &str,
    deadline: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    if id.is_empty() || id.contains('/') {
        bail!("invalid worker id {id:?}");
    }
    let path = format!("/api/workers/{id}/decommission{}", deadline_query(deadline));
    let (addr, answer) = on_leader(admins, &path, true).await?;
    if answer.status == hyper::StatusCode::NOT_FOUND {
        bail!("unknown worker {id}: the leading master ({addr}) does not know it (see `sluice admin workers`)");
    }
    if !answer.status.is_success() {
        bail!("{addr}: {}", answer.error_message());
    }
    let state = text(&answer.json()["state"]);
    println!("worker {id}: {state}; {}", leaving(deadline));
    Ok(())
}

/// Decommissions the worker whose admin port is `addr` (the preStop form), draining it within
/// `deadline` when given.
pub async fn decommission_worker(
    addr: &str,
    deadline: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let path = format!("/api/decommission{}", deadline_query(deadline));
    let answer = crate::http::post(addr, &path).await?;
    if !answer.status.is_success() {
        bail!("{addr}: {}", answer.error_message());
    }
    let id = text(&answer.json()["id"]);
    println!(
        "worker {id}: decommissioning; the masters learn it from its next heartbeat, and {}",
        leaving(deadline)
    );
    Ok(())
}

/// Drops the nulls of a JSON value (unset options), which TOML cannot say.
fn without_nulls(value: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::Object(map) => Some(Value::Object(
            map.into_iter()
                .filter_map(|(k, v)| without_nulls(v).map(|v| (k, v)))
                .collect(),
        )),
        Value::Array(items) => Some(Value::Array(
            items.into_iter().filter_map(without_nulls).collect(),
        )),
        other => Some(other),
    }
}

/// The effective configuration served at `/api/config`, as TOML (unset options left out).
pub fn config_toml(json: serde_json::Value) -> anyhow::Result<String> {
    let value = without_nulls(json).unwrap_or_else(|| serde_json::json!({}));
    toml::to_string(&value).context("the configuration does not convert to TOML")
}

/// Prints the effective configuration of the process whose admin port is `addr`.
pub async fn print_config(addr: &str, json: bool) -> anyhow::Result<()> {
    let answer = crate::http::get(addr, "/api/config").await?;
    if !answer.status.is_success() {
        bail!("{addr}/api/config: {}", answer.error_message());
    }
    let value: serde_json::Value = serde_json::from_str(&answer.body)
        .with_context(|| format!("{addr}/api/config is not JSON"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", config_toml(value)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let rows = vec![
            vec!["worker-0".to_string(), "7".to_string()],
            vec!["w".to_string(), "1234".to_string()],
        ];
        let out = table(&["ID", "PARTITIONS"], &["PARTITIONS"], &rows);
        assert_eq!(
            out,
            "ID        PARTITIONS\nworker-0           7\nw               1234"
        );
    }

    #[test]
    fn config_toml_leaves_unset_options_out() {
        let json = serde_json::json!({
            "id": null,
            "listen": "0.0.0.0:9090",
            "peers": ["a:1", "b:2"],
            "limits": { "max": 3, "unset": null },
        });
        let toml = config_toml(json).unwrap();
        let back: toml::Value = toml::from_str(&toml).unwrap();
        assert_eq!(back["listen"].as_str(), Some("0.0.0.0:9090"));
        assert_eq!(back["limits"]["max"].as_integer(), Some(3));
        assert!(back.get("id").is_none(), "{toml}");
    }

    #[test]
    fn human_figures() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(human_age(1500), "1.5s");
        assert_eq!(human_age(120_000), "2.0m");
    }
}
