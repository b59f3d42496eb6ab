//! The admin ports on real in-process clusters: the master's JSON follows a running shuffle,
//! decommissioning (through the master or on the worker's own port) reaches both sides and keeps
//! new partitions off the worker, a follower points at the leader, and the `sluice admin`
//! commands of the built binary print tables, JSON and configurations.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{api, api_ok, eventually, find, spawn_slow_writer, write_records};
use serde_json::{json, Value};
use sluice::local::{LocalCluster, LocalOptions};
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::ShuffleKey;
use tokio_util::sync::CancellationToken;

/// Long enough for a few heartbeats (every 500 ms in a local cluster) on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

fn master_admin(cluster: &LocalCluster) -> String {
    cluster.master_admins[0].clone()
}

fn worker_admin(cluster: &LocalCluster, index: usize) -> String {
    cluster.worker_admins()[index]
        .clone()
        .expect("worker admin port")
}

/// Waits until the master's `/api/workers` shows worker `id` in `state`.
async fn worker_state(admin: &str, id: &str, state: &str) -> Value {
    eventually(&format!("worker {id} {state}"), PATIENCE, || async {
        let workers = api_ok(admin, "/api/workers").await;
        find(&workers, "workers", "id", &json!(id))
            .filter(|w| w["state"] == state)
            .cloned()
    })
    .await
}

/// Waits until the worker's `/readyz` answers `status`.
async fn readiness(admin: &str, status: u16) {
    eventually(&format!("{admin}/readyz {status}"), PATIENCE, || async {
        let answer = sluice::http::get(admin, "/readyz").await.ok()?;
        (answer.status.as_u16() == status).then_some(())
    })
    .await
}

/// The ids of the workers holding some copy of a registration's placement.
fn placed_on(locations: &pb::ShuffleLocations) -> Vec<String> {
    let mut used: Vec<String> = locations
        .primary_worker
        .iter()
        .chain(locations.replica_worker.iter().filter(|r| **r != u32::MAX))
        .map(|w| locations.workers[*w as usize].id.clone())
        .collect();
    used.sort();
    used.dedup();
    used
}

async fn register(
    cluster: &LocalCluster,
    key: &ShuffleKey,
    partitions: u32,
    replication: u32,
) -> pb::ShuffleLocations {
    let mut master = MasterClient::connect(format!("http://{}", cluster.master_addr))
        .await
        .unwrap();
    master
        .register_shuffle(pb::RegisterShuffleRequest {
            shuffle: Some(key.to_pb()),
            num_maps: 1,
            num_partitions: partitions,
            replication,
        })
        .await
        .unwrap()
        .into_inner()
        .locations
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_json_follows_a_running_shuffle_to_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let admin = master_admin(&cluster);
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("admin-app", 3);
    let handle = client.register_shuffle(&key, 2, 4).await.unwrap();
    let mut first = client.writer(handle.clone(), 0, 0).unwrap();
    first.write(1, b"one record of map 0").await.unwrap();
    first.finish().await.unwrap();
    let stop = CancellationToken::new();
    let slow = spawn_slow_writer(&client, handle.clone(), 1, stop.clone());

    let shuffles = api_ok(&admin, "/api/shuffles").await;
    assert_eq!(shuffles["total"], 1, "{shuffles}");
    let shuffle = &shuffles["shuffles"][0];
    assert_eq!(shuffle["app"], "admin-app");
    assert_eq!(shuffle["shuffle_id"], 3);
    assert_eq!(shuffle["state"], "running");
    assert_eq!(
        (&shuffle["maps_done"], &shuffle["maps"]),
        (&json!(1), &json!(2))
    );
    assert!(shuffle["bytes_written"].as_u64().unwrap() > 0, "{shuffle}");
    assert_eq!(shuffle["partitions"], 4);
    assert_eq!(shuffle["replication"], 2, "two workers: two copies");
    assert_eq!(
        (&shuffle["max_epoch"], &shuffle["revives"]),
        (&json!(0), &json!(0))
    );

    // Both workers hold copies and heartbeat, with their admin ports and figures.
    let workers = eventually("workers holding partitions", PATIENCE, || async {
        let workers = api_ok(&admin, "/api/workers").await;
        let holding = workers["workers"]
            .as_array()?
            .iter()
            .all(|w| w["partitions"].as_u64() > Some(0));
        holding.then_some(workers)
    })
    .await;
    let listed = workers["workers"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (i, worker) in listed.iter().enumerate() {
        assert_eq!(worker["id"], format!("worker-{i}"));
        assert_eq!(worker["state"], "active");
        assert_eq!(worker["admin"], worker_admin(&cluster, i).as_str());
        assert_eq!(worker["memory"]["budget_bytes"], 512 << 20);
        assert!(worker["last_heartbeat_ms"].as_u64().unwrap() < 10_000);
        let disk = &worker["disks"][0];
        assert!(disk["capacity_bytes"].as_u64().unwrap() > 0, "{disk}");
        assert!(disk["used_bytes"].as_u64().unwrap() <= disk["capacity_bytes"].as_u64().unwrap());
        for field in ["push_bytes_per_sec", "fetch_bytes_per_sec"] {
            assert!(
                worker[field].as_f64().is_some_and(|r| r >= 0.0),
                "{field}: {worker}"
            );
        }
        for field in ["pushed_bytes", "fetched_bytes"] {
            assert!(worker[field].is_u64(), "{field}: {worker}");
        }
    }

    let apps = api_ok(&admin, "/api/apps").await;
    let app = find(&apps, "apps", "id", &json!("admin-app")).expect("the app is listed");
    assert_eq!(app["shuffles"], 1);
    assert!(app["last_heartbeat_ms"].as_u64().unwrap() < 10_000);

    let status = api_ok(&admin, "/api/status").await;
    assert_eq!(status["id"], 0);
    assert_eq!(status["leader"]["addr"], cluster.master_addr.as_str());
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert_eq!(status["workers"]["active"], 2);
    assert_eq!(status["shuffles"]["running"], 1);
    assert_eq!(
        (&status["apps"], &status["partitions"]),
        (&json!(1), &json!(4))
    );

    let events = api_ok(&admin, "/api/events").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "worker_registered").count(),
        2
    );
    assert!(kinds.contains(&"leader"), "{kinds:?}");
    let newest = &events["events"][0];
    assert!(newest["at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let after = newest["seq"].as_u64().unwrap();
    let none_newer = api_ok(&admin, &format!("/api/events?after={after}")).await;
    assert_eq!(none_newer["events"], json!([]));

    // The last map ends: the shuffle commits.
    stop.cancel();
    slow.await.unwrap();
    let mut writer = client.writer(handle.clone(), 1, 1).unwrap();
    writer
        .write(2, b"the winning attempt of map 1")
        .await
        .unwrap();
    writer.finish().await.unwrap();
    let committed = eventually("the shuffle committed", PATIENCE, || async {
        let shuffles = api_ok(&admin, "/api/shuffles").await;
        let shuffle = shuffles["shuffles"][0].clone();
        (shuffle["state"] == "committed").then_some(shuffle)
    })
    .await;
    assert_eq!(committed["maps_done"], 2);
    assert_eq!(committed["lost_partitions"], 0);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_decommissioned_through_the_master_gets_no_new_partitions_nor_revives() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(3, dir.path()))
        .await
        .unwrap();
    let admin = master_admin(&cluster);

    let unknown = sluice::http::post(&admin, "/api/workers/nobody/decommission")
        .await
        .unwrap();
    assert_eq!(unknown.status.as_u16(), 404);
    assert!(unknown.error_message().contains("unknown worker nobody"));

    let asked = sluice::http::post(&admin, "/api/workers/worker-2/decommission")
        .await
        .unwrap();
    assert_eq!(asked.status.as_u16(), 200, "{}", asked.body);
    assert_eq!(asked.json()["state"], "decommissioning");
    // The master places nothing on it from now on; the worker hears it with its next heartbeat.
    worker_state(&admin, "worker-2", "decommissioning").await;
    let worker = worker_admin(&cluster, 2);
    readiness(&worker, 503).await;
    assert_eq!(
        api_ok(&worker, "/api/status").await["state"],
        "decommissioning"
    );
    readiness(&worker_admin(&cluster, 0), 200).await;
    let status = api_ok(&admin, "/api/status").await;
    assert_eq!(status["workers"]["decommissioning"], 1, "{status}");
    assert_eq!(status["workers"]["active"], 2, "{status}");
    let events = api_ok(&admin, "/api/events").await;
    let leaving = find(&events, "events", "kind", &json!("worker_decommissioning"))
        .expect("a decommissioning event");
    assert_eq!(leaving["worker"], "worker-2");

    // New shuffles avoid it.
    let key = ShuffleKey::new("decommission", 0);
    let locations = register(&cluster, &key, 12, 2).await;
    assert_eq!(placed_on(&locations), ["worker-0", "worker-1"]);
    // So do revives: partition 0's copies are on workers 0 and 1, which a revive avoids when
    // it can; the only other worker is leaving, so the new epoch goes back to 0 and 1.
    for epoch in 0..2 {
        let moved = common::revive(&cluster.master_addr, &key, 0, epoch).await;
        assert_eq!(moved.epoch, epoch + 1);
        for copy in [moved.primary, moved.replica] {
            let copy = copy.expect("both copies placed");
            assert_ne!(
                copy.id,
                "worker-2",
                "epoch {} placed on a leaving worker",
                epoch + 1
            );
        }
    }
    // Asking again changes nothing.
    let again = sluice::http::post(&admin, "/api/workers/worker-2/decommission")
        .await
        .unwrap();
    assert_eq!(again.json()["changed"], false);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_decommissioned_on_its_own_port_is_known_to_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let admin = master_admin(&cluster);
    let worker = worker_admin(&cluster, 1);
    let before = api_ok(&worker, "/api/status").await;
    assert_eq!(before["id"], "worker-1");
    assert_eq!(before["state"], "active");
    assert_eq!(before["registered"], true);
    assert_eq!(before["memory"]["budget_bytes"], 512 << 20);
    assert!(before["disks"][0]["capacity_bytes"].as_u64().unwrap() > 0);
    assert!(before["traffic"]["pushed_bytes"].is_u64(), "{before}");
    readiness(&worker, 200).await;

    let answer = sluice::http::post(&worker, "/api/decommission")
        .await
        .unwrap();
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.body);
    assert_eq!(answer.json()["changed"], true);
    // Not ready at once; the master learns it from the next heartbeat.
    let (status, _) = api(&worker, "/readyz").await;
    assert_eq!(status, 503);
    worker_state(&admin, "worker-1", "decommissioning").await;

    // Only one worker takes partitions now: the cluster's default replication is 1.
    let locations = register(&cluster, &ShuffleKey::new("own-port", 0), 8, 0).await;
    assert_eq!(placed_on(&locations), ["worker-0"]);
    assert!(locations.replica_worker.iter().all(|r| *r == u32::MAX));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_master_points_at_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(1, dir.path());
    options.masters = 3;
    let cluster = LocalCluster::start(options).await.unwrap();
    let (leader, follower) = eventually("a leader and a follower", PATIENCE, || async {
        let mut leader = None;
        let mut follower = None;
        for (i, admin) in cluster.master_admins.iter().enumerate() {
            match api(admin, "/api/workers").await {
                (200, _) => leader = Some(i),
                (503, json) if json["leader"].is_string() => follower = Some((i, json)),
                _ => {}
            }
        }
        Some((leader?, follower?))
    })
    .await;
    let (index, answer) = follower;
    assert!(answer["error"].as_str().unwrap().contains("not the leader"));
    assert_eq!(answer["leader"], cluster.masters[leader].as_str());
    // The page and the common routes answer anywhere.
    let page = sluice::http::get(&cluster.master_admins[index], "/")
        .await
        .unwrap();
    assert_eq!(page.status.as_u16(), 200);
    assert!(page.body.contains("<title>Sluice status</title>"));
    let (status, _) = api(&cluster.master_admins[index], "/api/config").await;
    assert_eq!(status, 200);
    cluster.shutdown().await.unwrap();
}

// The `sluice admin` commands of the built binary, against `sluice local`.

/// A `sluice local` process, killed when dropped.
struct Local {
    child: Child,
    ready: Value,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_local(data_dir: &std::path::Path) -> Local {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["local", "--workers", "2", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sluice local starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let ready = serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    Local { child, ready }
}

/// Runs `sluice admin ARGS`: its exit status, stdout and stderr.
async fn sluice_admin(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("admin")
            .args(&args)
            .output()
            .expect("sluice admin runs")
    })
    .await
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `sluice admin ARGS`, which must succeed; its stdout.
async fn admin_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = sluice_admin(args).await;
    assert!(ok, "sluice admin {args:?} failed: {stderr}");
    stdout
}

/// The header and the rows of a printed table, each split into its columns.
fn columns(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_commands_print_tables_json_and_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let local = start_local(dir.path());
    let master = local.ready["master"].as_str().unwrap().to_string();
    let admin = local.ready["admin"][0].as_str().unwrap().to_string();
    let worker_admins: Vec<String> = local.ready["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["admin"].as_str().unwrap().to_string())
        .collect();
    let client = SluiceClient::new(ClientConfig::new(master.clone())).unwrap();
    write_records(&client, &ShuffleKey::new("cli-app", 7), (2, 3), 50, 200).await;

    // Unreachable addresses are skipped until the leader answers.
    let listing = format!("127.0.0.1:1,{admin}");
    let workers = admin_ok(&["workers", "--master", &listing]).await;
    let rows = columns(&workers);
    assert_eq!(rows[0][..3], ["ID", "STATE", "PUSH ADDR"], "{workers}");
    assert_eq!(rows.len(), 3, "{workers}");
    assert_eq!(rows[1][..2], ["worker-0", "active"], "{workers}");
    assert_eq!(rows[2][..2], ["worker-1", "active"], "{workers}");
    let json: Value =
        serde_json::from_str(&admin_ok(&["workers", "--master", &admin, "--json"]).await)
            .expect("workers --json is JSON");
    assert_eq!(json["workers"].as_array().map(Vec::len), Some(2));

    let shuffles = eventually("the shuffle committed", PATIENCE, || async {
        let table = admin_ok(&["shuffles", "--master", &admin]).await;
        table.contains("committed").then_some(table)
    })
    .await;
    let rows = columns(&shuffles);
    assert_eq!(
        rows[0][..4],
        ["APP", "SHUFFLE", "STATE", "MAPS DONE"],
        "{shuffles}"
    );
    assert_eq!(
        rows[1][..4],
        ["cli-app", "7", "committed", "2/2"],
        "{shuffles}"
    );
    let json: Value =
        serde_json::from_str(&admin_ok(&["shuffles", "--master", &admin, "--json"]).await)
            .expect("shuffles --json is JSON");
    assert_eq!(json["shuffles"][0]["partitions"], 3);

    let apps = admin_ok(&["apps", "--master", &admin]).await;
    let rows = columns(&apps);
    assert_eq!(rows[0], ["APP", "SHUFFLES", "LAST HEARTBEAT"], "{apps}");
    assert_eq!(rows[1][..2], ["cli-app", "1"], "{apps}");
    let json: Value =
        serde_json::from_str(&admin_ok(&["apps", "--master", &admin, "--json"]).await)
            .expect("apps --json is JSON");
    assert_eq!(json["apps"][0]["id"], "cli-app");

    // Decommissioning: through the master by id, and on a worker's own port.
    let said = admin_ok(&["decommission", "worker-1", "--master", &admin]).await;
    assert!(said.contains("worker-1: decommissioning"), "{said}");
    let said = admin_ok(&["decommission", "--worker", &worker_admins[0]]).await;
    assert!(said.contains("worker-0: decommissioning"), "{said}");
    let workers = eventually("both workers decommissioning", PATIENCE, || async {
        let table = admin_ok(&["workers", "--master", &admin]).await;
        (table.matches("decommissioning").count() == 2).then_some(table)
    })
    .await;
    assert!(!workers.contains("active"), "{workers}");

    // Clear errors.
    let (ok, _, stderr) = sluice_admin(&["decommission", "nobody", "--master", &admin]).await;
    assert!(!ok);
    assert!(stderr.contains("unknown worker nobody"), "{stderr}");
    let (ok, _, stderr) = sluice_admin(&["workers", "--master", "127.0.0.1:1"]).await;
    assert!(!ok);
    assert!(stderr.contains("cannot connect to 127.0.0.1:1"), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
    let (ok, _, stderr) = sluice_admin(&["decommission", "--worker", "127.0.0.1:1"]).await;
    assert!(!ok);
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // The effective configuration of a worker and of the master, TOML and JSON.
    let toml_text = admin_ok(&["config", "--admin", &worker_admins[1]]).await;
    let config: toml::Value = toml::from_str(&toml_text).expect("config is TOML");
    assert_eq!(config["id"].as_str(), Some("worker-1"));
    assert_eq!(config["master"].as_str(), Some(master.as_str()));
    assert_eq!(config["heartbeat_interval"].as_str(), Some("500ms"));
    let json: Value =
        serde_json::from_str(&admin_ok(&["config", "--admin", &admin, "--json"]).await)
            .expect("config --json is JSON");
    assert_eq!(json["listen"], master.as_str());
    let toml_text = admin_ok(&["config", "--admin", &admin]).await;
    let config: toml::Value = toml::from_str(&toml_text).expect("master config is TOML");
    assert_eq!(config["listen"].as_str(), Some(master.as_str()));

    // `masters` still works (over gRPC).
    let masters = admin_ok(&["masters", "--master", &master]).await;
    assert!(masters.contains("leader"), "{masters}");
}
