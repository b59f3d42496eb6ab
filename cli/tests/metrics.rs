//! The metrics of a real in-process cluster, scraped over HTTP from every master's and worker's
//! admin port after a shuffle: every metric of the contract is there with its `# HELP`, the
//! traffic counters moved, the latency histograms have buckets; and with `metrics = false` the
//! data path works while `/metrics` answers 404.

mod common;

use common::{read_records, write_records};
use sluice::local::{LocalCluster, LocalOptions};
use sluice_client::{ClientConfig, ClientMetrics, SluiceClient};
use sluice_ops::Telemetry;
use sluice_protocol::ShuffleKey;

const WORKER_METRICS: &[&str] = &[
    "sluice_worker_push_bytes_total",
    "sluice_worker_push_requests_total",
    "sluice_worker_fetch_bytes_total",
    "sluice_worker_fetch_requests_total",
    "sluice_worker_push_latency_seconds",
    "sluice_worker_fetch_latency_seconds",
    "sluice_worker_flush_latency_seconds",
    "sluice_worker_commit_latency_seconds",
    "sluice_worker_memory_used_bytes",
    "sluice_worker_memory_budget_bytes",
    "sluice_worker_busy_total",
    "sluice_worker_auth_refused_total",
    "sluice_worker_replication_forwards_total",
    "sluice_worker_replication_failures_total",
    "sluice_worker_replication_forward_bytes_total",
    "sluice_worker_handover_bytes_total",
    "sluice_worker_drain_copies_total",
    "sluice_worker_dfs_uploaded_bytes_total",
    "sluice_worker_dfs_offloaded_bytes_total",
    "sluice_worker_active_partitions",
    "sluice_worker_active_shuffles",
    "sluice_worker_disk_used_bytes",
    "sluice_worker_disk_files",
    "sluice_worker_disk_free_bytes",
    "sluice_worker_disk_capacity_bytes",
    "sluice_worker_io_engine",
    "sluice_worker_state",
    "sluice_worker_connections",
];

const MASTER_METRICS: &[&str] = &[
    "sluice_master_leader",
    "sluice_master_workers",
    "sluice_master_shuffles_active",
    "sluice_master_apps_active",
    "sluice_master_partitions_active",
    "sluice_master_registers_total",
    "sluice_master_register_latency_seconds",
    "sluice_master_revives_total",
    "sluice_master_revive_latency_seconds",
    "sluice_master_commits_total",
    "sluice_master_commit_latency_seconds",
    "sluice_master_map_ends_total",
    "sluice_master_workers_lost_total",
    "sluice_master_partitions_lost_total",
    "sluice_master_auth_refused_total",
];

const CLIENT_METRICS: &[&str] = &[
    "sluice_client_push_bytes_total",
    "sluice_client_push_retries_total",
    "sluice_client_revives_total",
    "sluice_client_fetch_retries_total",
    "sluice_client_data_lost_total",
];

use common::{get, metric_sum as sum};

fn assert_described(text: &str, names: &[&str]) {
    for name in names {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no # HELP line:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_served_with_help_and_counts_the_shuffle() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let telemetry = Telemetry::new(true, &[("app", "metrics-test")]);
    let client_metrics = telemetry.register(ClientMetrics::new);
    let client = SluiceClient::with_metrics(
        ClientConfig {
            replication: 2,
            ..ClientConfig::new(cluster.master_addr.clone())
        },
        client_metrics.clone(),
    )
    .unwrap();
    let key = ShuffleKey::new("metrics-test", 0);
    let ids = write_records(&client, &key, (3, 4), 300, 500).await;
    let seen = read_records(&client, &key, 0..4, None).await.unwrap();
    assert_eq!(seen.len(), ids.len());

    let (status, master) = get(&cluster.master_admins[0], "/metrics").await;
    assert_eq!(status, 200, "{master}");
    assert_described(&master, MASTER_METRICS);
    assert_eq!(sum(&master, "sluice_master_leader", ""), 1.0);
    assert_eq!(
        sum(&master, "sluice_master_workers", "state=\"active\""),
        2.0
    );
    assert_eq!(sum(&master, "sluice_master_workers", "state=\"lost\""), 0.0);
    assert_eq!(sum(&master, "sluice_master_shuffles_active", ""), 1.0);
    assert_eq!(sum(&master, "sluice_master_partitions_active", ""), 4.0);
    assert_eq!(sum(&master, "sluice_master_registers_total", ""), 1.0);
    assert_eq!(sum(&master, "sluice_master_map_ends_total", ""), 3.0);
    assert_eq!(
        sum(&master, "sluice_master_commits_total", "result=\"ok\""),
        1.0
    );
    assert_eq!(sum(&master, "sluice_master_partitions_lost_total", ""), 0.0);
    assert!(
        master.contains("sluice_master_commit_latency_seconds_bucket{"),
        "{master}"
    );
    assert!(master.contains("master=\"0\""), "{master}");

    let mut pushed = 0.0;
    let mut fetched = 0.0;
    let mut forwarded = 0.0;
    for (i, admin) in cluster.worker_admins().iter().enumerate() {
        let admin = admin.as_deref().expect("workers have admin ports");
        let (status, worker) = get(admin, "/metrics").await;
        assert_eq!(status, 200, "{worker}");
        assert_described(&worker, WORKER_METRICS);
        assert!(
            worker.contains(&format!("worker=\"worker-{i}\"")),
            "{worker}"
        );
        for histogram in [
            "sluice_worker_push_latency_seconds",
            "sluice_worker_fetch_latency_seconds",
            "sluice_worker_flush_latency_seconds",
            "sluice_worker_commit_latency_seconds",
        ] {
            assert!(
                worker.contains(&format!("{histogram}_bucket{{")),
                "{histogram}:\n{worker}"
            );
        }
        pushed += sum(&worker, "sluice_worker_push_bytes_total", "");
        fetched += sum(&worker, "sluice_worker_fetch_bytes_total", "");
        forwarded += sum(&worker, "sluice_worker_replication_forward_bytes_total", "");
        assert!(sum(&worker, "sluice_worker_push_requests_total", "") > 0.0);
        assert_eq!(sum(&worker, "sluice_worker_active_shuffles", ""), 1.0);
        assert!(sum(&worker, "sluice_worker_active_partitions", "") > 0.0);
        assert!(sum(&worker, "sluice_worker_memory_budget_bytes", "") > 0.0);
        assert!(sum(&worker, "sluice_worker_disk_capacity_bytes", "") > 0.0);
        assert!(sum(&worker, "sluice_worker_disk_used_bytes", "") > 0.0);
        assert!(sum(&worker, "sluice_worker_disk_files", "") >= 3.0);
        assert_eq!(sum(&worker, "sluice_worker_io_engine", ""), 1.0);
        assert_eq!(sum(&worker, "sluice_worker_state", "state=\"active\""), 1.0);
        assert!(sum(&worker, "sluice_worker_connections", "port=\"push\"") >= 1.0);
        assert_eq!(
            sum(&worker, "sluice_worker_replication_failures_total", ""),
            0.0
        );
    }
    // Every batch was pushed twice (primary and replica) and read once.
    let client_pushed = client_metrics.snapshot().push_bytes as f64;
    assert!(client_pushed > 0.0);
    assert_eq!(pushed, 2.0 * client_pushed);
    assert_eq!(forwarded, client_pushed);
    assert!(fetched >= client_pushed, "{fetched} < {client_pushed}");

    let client_text = telemetry.render().unwrap();
    assert_described(&client_text, CLIENT_METRICS);
    assert_eq!(
        sum(
            &client_text,
            "sluice_client_push_bytes_total",
            "app=\"metrics-test\""
        ),
        client_pushed
    );
    assert_eq!(sum(&client_text, "sluice_client_data_lost_total", ""), 0.0);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_off_data_flows_and_the_metrics_route_answers_404() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(1, dir.path());
    options.master.metrics = false;
    options.worker.metrics = false;
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("metrics-off", 0);
    let ids = write_records(&client, &key, (2, 3), 200, 300).await;
    let seen = read_records(&client, &key, 0..3, None).await.unwrap();
    assert_eq!(seen.len(), ids.len());
    assert!(client.metrics().snapshot().push_bytes > 0);

    let worker = cluster.worker_admins()[0].clone().unwrap();
    for admin in [cluster.master_admins[0].as_str(), worker.as_str()] {
        let (status, body) = get(admin, "/metrics").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("metrics are off"), "{body}");
        assert_eq!(get(admin, "/healthz").await.0, 200);
    }
    cluster.shutdown().await.unwrap();
}
