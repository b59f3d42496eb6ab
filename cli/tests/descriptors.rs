//! Workers holding many partitions hold no file descriptors for them: files are opened per
//! flush (at most a bounded number of flushes per disk at once, even when every partition
//! flushes at commit) and per read, and a batched fetch answer opens each chunk's file only as
//! that chunk goes out. (Its own test binary, so no other test's sockets or files skew the
//! count, and the descriptor limit it lowers binds nothing else.)

use sluice::local::{LocalCluster, LocalOptions};
use sluice_protocol::ShuffleKey;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Sets this process's soft RLIMIT_NOFILE and returns the one it replaced.
fn lower_descriptor_limit(soft: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let previous = limit.rlim_cur;
        limit.rlim_cur = soft.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        previous
    }
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
    // The read runs under a descriptor limit far below one per partition. A batched fetch
    // answer lists up to 1024 chunks and a connection queues several: a worker that opened
    // every listed chunk's file when it built the answer ran out of descriptors here, and its
    // reader saw every byte that was on disk reported lost.
    let limit = before as u64 + 400;
    let previous = lower_descriptor_limit(limit);
    let mut reader = client.reader(&key, 0..partitions, None).await.unwrap();
    let mut read = 0;
    while let Some(block) = reader.next().await.unwrap() {
        read += block.len() / 4;
    }
    assert_eq!(read, partitions as usize);
    lower_descriptor_limit(previous);
    let after = open_descriptors();
    // Two files per location would be 48,000 descriptors.
    assert!(
        after < before + 200,
        "{before} descriptors before, {after} after"
    );
    cluster.shutdown().await.unwrap();
}
