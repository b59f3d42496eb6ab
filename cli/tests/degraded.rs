//! A sick link on a real in-process cluster: every worker's ports behind a fault-injecting
//! proxy (`LocalOptions::proxied`). The chaos suite runs the sicknesses on processes
//! (`cargo run -p chaos -- --scenario stalling-link` and the others it lists).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chaos::proxy::Shape;
use sluice::local::{LocalCluster, LocalOptions};
use sluice::records::{self, RecordId};
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::ShuffleKey;

/// A reader part-way through a shuffle whose worker holding the copy it reads next stops
/// answering (its fetch link frozen for a minute) reads the other copies instead: every record
/// exactly once, without waiting for the link, and the hedged reads counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_moves_off_a_frozen_copy_to_the_other_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(3, dir.path());
    options.proxied = true;
    // Small chunks: a partition is many fetches, so the reader is still fetching it when the
    // link freezes.
    options.worker.chunk_size = bytesize::ByteSize::kib(64);
    let cluster = LocalCluster::start(options).await.unwrap();
    let writer = SluiceClient::new(ClientConfig {
        replication: 2,
        compression: sluice_protocol::batch::Codec::None,
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let key = ShuffleKey::new("frozen-copy", 0);
    let (maps, partitions, per_map) = (4u32, 4u32, 8000u32);
    let handle = writer
        .register_shuffle(&key, maps, partitions)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for map in 0..maps {
        let mut w = writer.writer(handle.clone(), map, 0).unwrap();
        let mut record = Vec::new();
        for seq in 0..per_map {
            record.clear();
            records::encode(&mut record, map, seq, 200 + (seq as usize * 13) % 700);
            w.write(seq % partitions, &record).await.unwrap();
            ids.push(RecordId { map, seq });
        }
        w.finish().await.unwrap();
    }
    // The worker holding partition 1's primary: the copy read first, after partition 0.
    let primary = &handle.locations.workers[handle.locations.primary_worker[1] as usize].id;
    let victim = cluster
        .workers()
        .iter()
        .position(|w| &w.id == primary)
        .unwrap();

    // A reader that fetches one window (4 MiB) ahead; request timeouts stay at their ceiling
    // of a minute unless the worker's round trips bring them down.
    let client = SluiceClient::new(ClientConfig {
        prefetch_chunks: 1,
        request_timeout: Duration::from_secs(60),
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let mut reader = client.reader(&key, 0..partitions, None).await.unwrap();
    let mut seen: HashMap<RecordId, usize> = HashMap::new();
    let mut take = |block: &[u8]| {
        records::parse(block, true, |id, _, intact| {
            assert!(intact, "record {id:?} changed");
            *seen.entry(id).or_insert(0) += 1;
        })
        .unwrap();
    };
    let first = reader.next().await.unwrap().unwrap();
    take(&first);
    let frozen = Shape {
        stall_every: Duration::from_millis(1),
        stall_for: Duration::from_secs(60),
        ..Shape::default()
    };
    cluster
        .shape_worker(victim, Shape::default(), frozen)
        .unwrap();
    let started = Instant::now();
    while let Some(block) = reader.next().await.unwrap() {
        take(&block);
    }
    let took = started.elapsed();
    assert_eq!(seen.len(), ids.len(), "distinct records read");
    for id in &ids {
        assert_eq!(seen.get(id), Some(&1), "record {id:?}");
    }
    let metrics = client.metrics().snapshot();
    assert!(
        metrics.hedges > 0,
        "the reader never moved off the frozen worker: {metrics:?}"
    );
    assert_eq!(metrics.data_lost, 0);
    // The link was frozen for a minute: a read that waited for it took longer.
    assert!(took < Duration::from_secs(50), "the read waited: {took:?}");
    drop(reader);
    cluster.shutdown().await.unwrap();
}

/// `sluice bench --degraded` runs the verified workload clean, with 100 ms disk writes and
/// behind 20 ms + jitter links, and reports each condition's time and slowdown.
#[test]
fn the_bench_compares_a_slow_disk_and_a_slow_link_with_a_clean_run() {
    let report = common::bench_report(&[
        "--degraded",
        "1",
        "--workers",
        "2",
        "--maps",
        "2",
        "--partitions",
        "4",
        "--bytes-per-map",
        "1MiB",
        "--verify",
        "--loopback-bytes",
        "0",
    ]);
    let degraded = &report["degraded"];
    let conditions: Vec<&str> = degraded["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["condition"].as_str().unwrap())
        .collect();
    assert_eq!(conditions, ["clean", "slow-disk", "slow-link"], "{report}");
    for condition in degraded["conditions"].as_array().unwrap() {
        assert!(condition["secs"].as_f64().unwrap() > 0.0, "{condition}");
        assert!(condition["slowdown"].as_f64().unwrap() > 0.0, "{condition}");
    }
    assert_eq!(degraded["conditions"][0]["slowdown"], 1.0, "{report}");
    assert_eq!(degraded["lost"], 0, "{report}");
    assert_eq!(degraded["duplicated"], 0, "{report}");
    assert_eq!(degraded["corrupted"], 0, "{report}");
}
