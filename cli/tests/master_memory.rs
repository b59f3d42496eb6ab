//! The master's memory does not grow with what a request claims, only with what happens.
//!
//! One test in its own binary: it reads this process's resident set size, which other tests
//! running beside it would disturb.

use sluice::local::{LocalCluster, LocalOptions};
use sluice_master::MasterConfig;
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::{ErrorCode, ShuffleKey};

/// This process's resident set size, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_ten_million_maps_costs_no_memory_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(1, dir.path());
    // The default limit refuses 10M maps (below); raised, the registrations must be cheap.
    options.master.max_maps_per_shuffle = 10_000_000;
    let cluster = LocalCluster::start(options).await.unwrap();
    let mut master = MasterClient::connect(format!("http://{}", cluster.master_addr))
        .await
        .unwrap();
    let register = |shuffle_id| pb::RegisterShuffleRequest {
        shuffle: Some(ShuffleKey::new("many-maps", shuffle_id).to_pb()),
        num_maps: 10_000_000,
        num_partitions: 1,
        replication: 1,
    };
    // Warm up connections and allocator arenas.
    let _ = master.register_shuffle(register(0)).await;
    let before = rss_bytes();
    for shuffle_id in 1..=4 {
        master
            .register_shuffle(register(shuffle_id))
            .await
            .expect("10M maps are within the configured limit");
    }
    let grown = rss_bytes().saturating_sub(before);
    // Per-map state used to be allocated at registration: about 300 MiB per shuffle.
    assert!(
        grown < 64 << 20,
        "four registrations of 10M maps grew the process by {} MiB",
        grown >> 20
    );
    cluster.shutdown().await.unwrap();

    // With the default limits 10M maps are refused, naming the limit.
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(1, dir.path()))
        .await
        .unwrap();
    assert!(MasterConfig::default().max_maps_per_shuffle < 10_000_000);
    let mut master = MasterClient::connect(format!("http://{}", cluster.master_addr))
        .await
        .unwrap();
    let refused = master.register_shuffle(register(9)).await.unwrap_err();
    assert_eq!(
        ErrorCode::from_grpc(refused.code()),
        ErrorCode::InvalidRequest
    );
    assert!(
        refused.message().contains("max_maps_per_shuffle"),
        "{}",
        refused.message()
    );
    cluster.shutdown().await.unwrap();
}
