//! The reader against real in-process clusters in states the client's writer does not produce
//! by itself: batches that pass their checksum but do not decode, batches in the wrong
//! partition, the same batches in two epochs, copies of one epoch that differ, fetch ports that
//! drop connections, empty map ranges; and a writer whose pushes were refused as committed
//! although its attempt wins.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{client, mapper_end, push_raw, record_batch, revive, stats_of};
use sluice::local::{LocalCluster, LocalOptions};
use sluice::records::{self, RecordId};
use sluice_client::{ClientConfig, ClientError, ShuffleHandle, ShuffleWriter, SluiceClient};
use sluice_protocol::batch::{self, BatchTag, Codec};
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{FrameLimits, MessageType};
use sluice_protocol::pb::Role;
use sluice_protocol::rpc::RpcClient;
use sluice_protocol::{pb, ErrorCode, ShuffleKey};
use tokio::net::{TcpListener, TcpStream};

async fn start(workers: usize, dir: &std::path::Path) -> LocalCluster {
    LocalCluster::start(LocalOptions::new(workers, dir))
        .await
        .unwrap()
}

/// Reads `partitions` and counts every record; checks each record's bytes.
async fn read(
    client: &SluiceClient,
    key: &ShuffleKey,
    partitions: std::ops::Range<u32>,
    maps: Option<std::ops::Range<u32>>,
) -> Result<HashMap<RecordId, usize>, ClientError> {
    common::read_records(client, key, partitions, maps).await
}

/// Asserts every record of map 0 with a sequence number in `seqs` was read exactly once, and
/// nothing else.
fn assert_read_once(seen: &HashMap<RecordId, usize>, seqs: std::ops::Range<u32>) {
    let expected: HashMap<RecordId, usize> =
        seqs.map(|seq| (RecordId { map: 0, seq }, 1)).collect();
    assert_eq!(seen, &expected);
}

fn primary_addr(handle: &ShuffleHandle, partition: usize) -> String {
    let locations = &handle.locations;
    locations.workers[locations.primary_worker[partition] as usize].push_addr()
}

/// Map 0 writes batches 0 and 2 intact and batch 1 with a valid checksum over data that is not
/// LZ4, to partition 0, and reports all three. Every copy holds the same bytes, so the read
/// must fail naming shuffle, partition and map, never return the other batches' records as the
/// whole partition.
async fn an_undecodable_batch_is_data_loss(replication: u32) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(2, dir.path()).await;
    let client = client(&cluster, replication);
    let key = ShuffleKey::new("undecodable", replication);
    let handle = client.register_shuffle(&key, 1, 1).await.unwrap();
    assert_eq!(
        handle.locations.replica_worker[0] != u32::MAX,
        replication == 2,
        "copies of partition 0"
    );
    let first = record_batch(0, 0, 0, 0..10);
    let tag = BatchTag {
        partition: 0,
        map_id: 0,
        attempt: 0,
        batch_id: 1,
    };
    let (_, garbage) = batch::encode_stored(tag, Codec::Lz4, 1000, &[0xF0; 64]).unwrap();
    let third = record_batch(0, 0, 2, 20..30);
    let batches = [&first, &garbage, &third];
    push_raw(
        &primary_addr(&handle, 0),
        &key,
        0,
        0,
        Role::Primary,
        &batches,
    )
    .await
    .unwrap();
    mapper_end(&cluster.master_addr, &key, 0, 0, &[(0, stats_of(&batches))]).await;

    let error = read(&client, &key, 0..1, None).await.unwrap_err();
    assert!(error.is_data_loss(), "{error}");
    let message = error.to_string();
    for part in [
        &format!("shuffle {key}"),
        "partition 0",
        "map 0",
        "does not decompress",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_batch_is_data_loss_with_two_copies() {
    an_undecodable_batch_is_data_loss(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_batch_is_data_loss_with_one_copy() {
    an_undecodable_batch_is_data_loss(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_another_partition_is_never_taken() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(2, dir.path()).await;
    let client = client(&cluster, 2);
    let key = ShuffleKey::new("misrouted", 0);
    let handle = client.register_shuffle(&key, 1, 2).await.unwrap();
    // A batch cut for partition 1, in partition 0's files, and reported for partition 0: the
    // totals match, only the partition in the batch head tells.
    let misrouted = record_batch(1, 0, 0, 0..10);
    let pushed = push_raw(
        &primary_addr(&handle, 0),
        &key,
        0,
        0,
        Role::Primary,
        &[&misrouted],
    )
    .await;
    match pushed {
        Ok(()) => {}
        // A worker that checks the partition on append refuses it: nothing left to read wrong.
        Err(e) if e.code() == ErrorCode::InvalidRequest => {
            cluster.shutdown().await.unwrap();
            return;
        }
        Err(e) => panic!("push failed: {e}"),
    }
    mapper_end(
        &cluster.master_addr,
        &key,
        0,
        0,
        &[(0, stats_of(&[&misrouted]))],
    )
    .await;
    let error = read(&client, &key, 0..1, None).await.unwrap_err();
    assert!(error.is_data_loss(), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("a batch of partition 1 (map 0, batch 0) is in a file of partition 0"),
        "{message}"
    );
    cluster.shutdown().await.unwrap();
}

/// A TCP proxy in front of a worker's fetch port that closes the next `drops` connections it
/// accepts at once, and forwards the others.
struct FlakyProxy {
    port: u16,
    drops: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl FlakyProxy {
    async fn bind() -> (FlakyProxy, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = FlakyProxy {
            port: listener.local_addr().unwrap().port(),
            drops: Arc::default(),
            accepted: Arc::default(),
        };
        (proxy, listener)
    }

    fn serve(&self, listener: TcpListener, target: String) {
        let drops = self.drops.clone();
        let accepted = self.accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let dropped = drops
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if dropped {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_fails_is_retried_on_the_same_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, listener) = FlakyProxy::bind().await;
    let mut options = LocalOptions::new(1, dir.path());
    // The worker tells the master (and so readers) the proxy's port as its fetch port.
    options.worker.advertise_fetch_port = proxy.port;
    let cluster = LocalCluster::start(options).await.unwrap();
    proxy.serve(listener, cluster.workers()[0].fetch_addr());
    let writer_client = client(&cluster, 1);
    let key = ShuffleKey::new("retry", 0);
    let handle = writer_client.register_shuffle(&key, 1, 2).await.unwrap();
    let mut writer = writer_client.writer(handle, 0, 0).unwrap();
    write_records(&mut writer, 0..200).await;
    writer.finish().await.unwrap();

    // The only copy's worker drops the reader's first two connections: retried, then read.
    proxy.drops.store(2, Ordering::SeqCst);
    let seen = read(&client(&cluster, 1), &key, 0..2, None).await.unwrap();
    assert_read_once(&seen, 0..200);
    assert_eq!(proxy.drops.load(Ordering::SeqCst), 0);
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 3);

    // The same hiccup without retries loses the only copy: the failures above were real.
    proxy.drops.store(1, Ordering::SeqCst);
    let no_retries = SluiceClient::new(ClientConfig {
        fetch_retries: 0,
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let error = read(&no_retries, &key, 0..2, None).await.unwrap_err();
    assert!(error.is_data_loss(), "{error}");
    assert!(
        error.to_string().contains("no copy could be opened"),
        "{error}"
    );
    cluster.shutdown().await.unwrap();
}

/// Map 0 writes three batches (records 0..30) to a partition `p` whose epoch 0 is on worker 0:
/// all of them at epoch 0, then a revive moves `p` to epoch 1 on the other worker, where the
/// first `in_epoch_1` are pushed again (a writer re-sending pushes whose acks it never got).
/// Map 0 reports all three. Returns `p`.
async fn write_in_two_epochs(
    cluster: &LocalCluster,
    client: &SluiceClient,
    key: &ShuffleKey,
    in_epoch_1: usize,
) -> u32 {
    let handle = client.register_shuffle(key, 1, 8).await.unwrap();
    let worker_0 = cluster.workers()[0].id.clone();
    let locations = &handle.locations;
    let p = (0..8u32)
        .find(|p| locations.workers[locations.primary_worker[*p as usize] as usize].id == worker_0)
        .expect("worker 0 holds a partition");
    let batches: Vec<Bytes> = (0..3)
        .map(|id| record_batch(p, 0, id, id * 10..id * 10 + 10))
        .collect();
    let batches: Vec<&Bytes> = batches.iter().collect();
    push_raw(
        &primary_addr(&handle, p as usize),
        key,
        p,
        0,
        Role::Primary,
        &batches,
    )
    .await
    .unwrap();
    let moved = revive(&cluster.master_addr, key, p, 0).await;
    let primary = moved.primary.unwrap();
    assert_eq!(moved.epoch, 1);
    assert_ne!(primary.id, worker_0);
    let again = &batches[..in_epoch_1];
    push_raw(&primary.push_addr(), key, p, 1, Role::Primary, again)
        .await
        .unwrap();
    mapper_end(&cluster.master_addr, key, 0, 0, &[(p, stats_of(&batches))]).await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_epoch_is_left_to_the_end_of_partition_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(2, dir.path()).await;
    let client = client(&cluster, 1);
    // Epoch 1 holds everything epoch 0 holds.
    let duplicates = ShuffleKey::new("duplicates", 0);
    write_in_two_epochs(&cluster, &client, &duplicates, 3).await;
    // Epoch 1 misses batch 2, which only epoch 0 holds.
    let short = ShuffleKey::new("short", 0);
    let p = write_in_two_epochs(&cluster, &client, &short, 2).await;

    // Both epochs readable: every record once.
    assert_read_once(
        &read(&client, &duplicates, 0..8, None).await.unwrap(),
        0..30,
    );
    assert_read_once(&read(&client, &short, 0..8, None).await.unwrap(), 0..30);

    // Worker 0, holding both epochs 0, is gone: an epoch of repeats is not missed, an epoch
    // holding batches no other one has is data loss naming it.
    cluster.stop_worker(0).await.unwrap();
    assert_read_once(
        &read(&client, &duplicates, 0..8, None).await.unwrap(),
        0..30,
    );
    let error = read(&client, &short, 0..8, None).await.unwrap_err();
    assert!(error.is_data_loss(), "{error}");
    let message = error.to_string();
    assert!(message.contains(&format!("partition {p}:")), "{message}");
    assert!(
        message.contains("epoch 0: no copy could be opened"),
        "{message}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_an_epoch_that_differ_are_both_read() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(2, dir.path()).await;
    let client = client(&cluster, 2);
    let key = ShuffleKey::new("differing-copies", 0);
    let handle = client.register_shuffle(&key, 1, 1).await.unwrap();
    let locations = &handle.locations;
    let replica = locations.workers[locations.replica_worker[0] as usize].push_addr();
    let batches: Vec<Bytes> = (0..3)
        .map(|id| record_batch(0, 0, id, id * 10..id * 10 + 10))
        .collect();
    let batches: Vec<&Bytes> = batches.iter().collect();
    // Batches 0 and 1 reach both copies; batch 2 only the replica, as a primary forwards it.
    push_raw(
        &primary_addr(&handle, 0),
        &key,
        0,
        0,
        Role::Primary,
        &batches[..2],
    )
    .await
    .unwrap();
    push_raw(&replica, &key, 0, 0, Role::Replica, &batches[2..])
        .await
        .unwrap();
    mapper_end(&cluster.master_addr, &key, 0, 0, &[(0, stats_of(&batches))]).await;
    assert_read_once(&read(&client, &key, 0..1, None).await.unwrap(), 0..30);
    cluster.shutdown().await.unwrap();
}

/// Writes records `seqs` of map 0 over two partitions.
async fn write_records(writer: &mut ShuffleWriter, seqs: std::ops::Range<u32>) {
    let mut record = Vec::new();
    for seq in seqs {
        record.clear();
        records::encode(&mut record, 0, seq, 100);
        writer.write(seq % 2, &record).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winning_attempt_whose_pushes_were_refused_as_committed_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(2, dir.path()).await;
    let client = client(&cluster, 0);
    let key = ShuffleKey::new("sealed-winner", 0);
    let handle = client.register_shuffle(&key, 1, 2).await.unwrap();
    // Two writers of the same map and attempt (a stage attempt's task numbers start at 0
    // again); the first pushes part of its output.
    let mut late = client.writer(handle.clone(), 0, 0).unwrap();
    write_records(&mut late, 0..100).await;
    late.flush().await.unwrap();
    // The other ends first: the shuffle's only map ended, the master commits it.
    let mut first = client.writer(handle.clone(), 0, 0).unwrap();
    write_records(&mut first, 0..200).await;
    let output = first.finish().await.unwrap();
    assert_eq!(output.winning_attempt, 0);
    // Opening a reader waits for the commit.
    client.reader(&key, 0..2, None).await.unwrap();
    // The rest of the first writer's output is refused as committed and dropped; the master
    // still names attempt 0 the winner, so this writer must not report success.
    write_records(&mut late, 100..200).await;
    late.flush().await.unwrap();
    let error = late.finish().await.unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::IncompleteOutput {
                map_id: 0,
                attempt: 0,
                ..
            }
        ),
        "{error}"
    );
    // Another attempt sealed out the same way lost to attempt 0: it reports the winner's output.
    let mut loser = client.writer(handle.clone(), 0, 1).unwrap();
    write_records(&mut loser, 0..100).await;
    let lost = loser.finish().await.unwrap();
    assert_eq!(lost.winning_attempt, 0);
    assert_eq!(lost.partition_bytes, output.partition_bytes);
    cluster.shutdown().await.unwrap();
}

/// Opens a stream of partition 0's primary copy at epoch 0 for maps `[start_map, end_map)` with
/// a raw request and returns its chunks.
async fn open_stream(
    fetch_addr: &str,
    key: &ShuffleKey,
    start_map: u32,
    end_map: Option<u32>,
) -> Vec<pb::Chunk> {
    let header = pb::OpenStreamHeader {
        location: Some(pb::LocationRef {
            shuffle: Some(key.to_pb()),
            partition: 0,
            epoch: 0,
            role: Role::Primary as i32,
        }),
        start_map,
        end_map,
        index_offset: 0,
    };
    let timeout = Duration::from_secs(30);
    let connection = RpcClient::connect(fetch_addr, FrameLimits::default(), timeout)
        .await
        .unwrap();
    let answer = connection
        .call_expecting(
            OutFrame::new(MessageType::OpenStream, 0, &header),
            MessageType::StreamOpened,
            timeout,
        )
        .await
        .unwrap();
    answer
        .decode_header::<pb::StreamOpenedHeader>("stream opened")
        .unwrap()
        .chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_map_range_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(1, dir.path()).await;
    let client = client(&cluster, 1);
    let key = ShuffleKey::new("map-ranges", 0);
    let handle = client.register_shuffle(&key, 3, 1).await.unwrap();
    for map in 0..3 {
        let mut writer = client.writer(handle.clone(), map, 0).unwrap();
        let mut record = Vec::new();
        for seq in 0..50 {
            record.clear();
            records::encode(&mut record, map, seq, 100);
            writer.write(0, &record).await.unwrap();
        }
        writer.finish().await.unwrap();
    }
    assert_eq!(read(&client, &key, 0..1, None).await.unwrap().len(), 150);

    let fetch = cluster.workers()[0].fetch_addr();
    assert!(!open_stream(&fetch, &key, 0, None).await.is_empty());
    assert!(!open_stream(&fetch, &key, 2, None).await.is_empty());
    assert!(!open_stream(&fetch, &key, 1, Some(2)).await.is_empty());
    for k in 0..4 {
        assert!(
            open_stream(&fetch, &key, k, Some(k)).await.is_empty(),
            "[{k}, {k}) opened chunks"
        );
    }
    for maps in [0..0, 2..2, 3..3] {
        assert!(read(&client, &key, 0..1, Some(maps))
            .await
            .unwrap()
            .is_empty());
    }
    cluster.shutdown().await.unwrap();
}
