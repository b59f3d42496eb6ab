//! `sluice local --masters 3`: three in-process masters form a Raft group, each keeping its
//! state in its own directory; workers and clients are given the list, and a shuffle goes
//! through exactly once.

mod common;

use common::{read_records, write_records};
use sluice::local::{LocalCluster, LocalOptions};
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::ShuffleKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shuffle_goes_through_three_local_masters() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(2, dir.path());
    options.masters = 3;
    let cluster = LocalCluster::start(options).await.unwrap();
    assert_eq!(cluster.masters.len(), 3);
    assert_eq!(cluster.master_addr, cluster.masters.join(","));
    let ready: serde_json::Value = serde_json::from_str(&cluster.ready_line()).unwrap();
    assert_eq!(ready["master"].as_str(), Some(cluster.master_addr.as_str()));
    assert_eq!(ready["masters"].as_array().map(Vec::len), Some(3));

    let client = SluiceClient::new(ClientConfig {
        replication: 2,
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let key = ShuffleKey::new("three-masters", 0);
    let ids = write_records(&client, &key, (2, 8), 600, 900).await;
    let seen = read_records(&client, &key, 0..8, None).await.unwrap();
    assert_eq!(seen.len(), ids.len(), "distinct records read");
    for id in &ids {
        assert_eq!(seen.get(id), Some(&1), "record {id:?}");
    }
    for i in 0..3 {
        let state = dir.path().join(format!("master-{i}"));
        assert!(state.is_dir(), "{} holds no master state", state.display());
    }
    cluster.shutdown().await.unwrap();
}
