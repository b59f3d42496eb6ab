//! Workers holding many partitions hold no file descriptors for them: files are opened per
//! flush (at most a bounded number of flushes per disk at once, even when every partition
//! flushes at commit) and per read. (Its own test binary, so no other test's sockets or files
//! skew the count.)

use sluice::local::{LocalCluster, LocalOptions};
use sluice_protocol::ShuffleKey;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_do_not_grow_with_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(1, dir.path()))
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    let partitions = 6000u32;
    let key = ShuffleKey::new("descriptors", 0);
    let handle = client.register_shuffle(&key, 1, partitions).await.unwrap();
    let before = open_descriptors();
    let mut writer = client.writer(handle, 0, 0).unwrap();
    for partition in 0..partitions {
        writer
            .write(partition, &partition.to_be_bytes())
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
    let mut reader = client.reader(&key, 0..partitions, None).await.unwrap();
    let mut read = 0;
    while let Some(block) = reader.next().await.unwrap() {
        read += block.len() / 4;
    }
    assert_eq!(read, partitions as usize);
    let after = open_descriptors();
    // Two files per location would be 48,000 descriptors.
    assert!(
        after < before + 200,
        "{before} descriptors before, {after} after"
    );
    cluster.shutdown().await.unwrap();
}
