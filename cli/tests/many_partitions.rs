//! Reading many small partitions through the batched requests of the fetch port (`OpenStreams`,
//! `FetchChunks`) on real in-process clusters: every record read exactly once, a location
//! missing from a batch failing over alone, another application's location refused inside a
//! batch, and batches above the worker's limits refused whole.

mod common;

use common::{app_credentials, client};

use std::collections::HashMap;
use std::time::Duration;

use sluice::local::{LocalCluster, LocalOptions};
use sluice::records::RecordId;
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::auth::Secret;
use sluice_protocol::connection::OutFrame;
use sluice_protocol::fetch::{split_chunks, MAX_FETCH_CHUNKS, MAX_OPEN_STREAMS};
use sluice_protocol::frame::{FrameLimits, MessageType};
use sluice_protocol::rpc::RpcClient;
use sluice_protocol::{pb, ErrorCode, ProtocolError, ShuffleKey};

const TIMEOUT: Duration = Duration::from_secs(10);

fn assert_exactly_once(seen: &HashMap<RecordId, usize>, ids: &[RecordId]) {
    let expected: HashMap<RecordId, usize> = ids.iter().map(|id| (*id, 1)).collect();
    assert_eq!(seen.len(), expected.len(), "records read");
    assert_eq!(seen, &expected);
}

fn location(key: &ShuffleKey, partition: u32, role: pb::Role) -> pb::LocationRef {
    pb::LocationRef {
        shuffle: Some(key.to_pb()),
        partition,
        epoch: 0,
        role: role as i32,
    }
}

fn open_streams(locations: Vec<pb::LocationRef>) -> OutFrame {
    let streams = locations
        .into_iter()
        .map(|location| pb::OpenStreamHeader {
            location: Some(location),
            start_map: 0,
            end_map: None,
            index_offset: 0,
        })
        .collect();
    OutFrame::new(
        MessageType::OpenStreams,
        0,
        &pb::OpenStreamsHeader { streams },
    )
}

fn fetch_chunks(chunks: Vec<(pb::LocationRef, pb::Chunk)>) -> OutFrame {
    let chunks = chunks
        .into_iter()
        .map(|(location, chunk)| pb::FetchChunkHeader {
            location: Some(location),
            chunk: Some(chunk),
        })
        .collect();
    OutFrame::new(
        MessageType::FetchChunks,
        0,
        &pb::FetchChunksHeader { chunks },
    )
}

fn refusal(result: Result<sluice_protocol::frame::Frame, ProtocolError>) -> (ErrorCode, String) {
    match result {
        Err(ProtocolError::Remote { code, message, .. }) => (code, message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_partitions_are_read_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = client(&cluster, 1);
    let key = ShuffleKey::new("many-partitions", 0);
    let partitions = 3000;
    let ids = common::write_records(&client, &key, (2, partitions), 3 * partitions, 200).await;
    // All at once (more partitions than one batched open takes), then in uneven ranges.
    let seen = common::read_records(&client, &key, 0..partitions, None)
        .await
        .unwrap();
    assert_exactly_once(&seen, &ids);
    let mut seen = HashMap::new();
    for range in [0..1, 1..700, 700..2999, 2999..3000] {
        for (id, count) in common::read_records(&client, &key, range, None)
            .await
            .unwrap()
        {
            *seen.entry(id).or_insert(0) += count;
        }
    }
    assert_exactly_once(&seen, &ids);
    // One map of the two.
    let seen = common::read_records(&client, &key, 0..partitions, Some(1..2))
        .await
        .unwrap();
    let map_one: Vec<RecordId> = ids.iter().copied().filter(|id| id.map == 1).collect();
    assert_exactly_once(&seen, &map_one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_partitions_are_read_under_tls() {
    // Under TLS a batched fetch's chunks are read and encrypted piece by piece, not sent by
    // sendfile.
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(1, dir.path());
    options.tls = true;
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("many-partitions-tls", 0);
    let ids = common::write_records(&client, &key, (2, 500), 1500, 200).await;
    let seen = common::read_records(&client, &key, 0..500, None)
        .await
        .unwrap();
    assert_exactly_once(&seen, &ids);
}

/// With two copies of every partition, one partition's primary loses its index (its entry of
/// the batched open fails) and another's loses its data file (its chunk of the batched fetch
/// fails): both are read from their replicas, and every other partition from its primary,
/// nothing lost or read twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_missing_from_a_batch_fails_over_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = client(&cluster, 2);
    let key = ShuffleKey::new("missing-in-batch", 0);
    let partitions = 400;
    // Twelve maps: every partition gets more batches than a worker keeps an index in memory
    // for, so each has an index file to lose.
    let ids = common::write_records(&client, &key, (12, partitions), 4 * partitions, 200).await;
    // Opening a reader waits for the commit; the files are final after it.
    drop(client.reader(&key, 0..1, None).await.unwrap());
    let files = common::data_files(dir.path());
    let primary = |partition: u32| {
        let name = format!("{partition}-0-p.data");
        files
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == name.as_str()))
            .unwrap_or_else(|| panic!("no primary file of partition {partition}"))
            .clone()
    };
    std::fs::remove_file(primary(17).with_extension("index")).unwrap();
    std::fs::remove_file(primary(230)).unwrap();
    let seen = common::read_records(&client, &key, 0..partitions, None)
        .await
        .unwrap();
    assert_exactly_once(&seen, &ids);

    // Straight on the wire: the batch answers the damaged location's entry with its own error
    // and the others in full.
    let holder = (0..2)
        .find(|&i| primary(17).starts_with(cluster.data_dir(i)))
        .expect("the worker holding partition 17's primary");
    let worker = &cluster.workers()[holder];
    let fetch = RpcClient::connect(&worker.fetch_addr(), FrameLimits::default(), TIMEOUT)
        .await
        .unwrap();
    let neighbours: Vec<u32> = (0..partitions)
        .filter(|&p| p != 17 && primary(p).starts_with(primary(17).parent().unwrap()))
        .take(3)
        .collect();
    let mut asked: Vec<pb::LocationRef> = neighbours
        .iter()
        .map(|&p| location(&key, p, pb::Role::Primary))
        .collect();
    asked.insert(1, location(&key, 17, pb::Role::Primary));
    let answer = fetch.call(open_streams(asked), TIMEOUT).await.unwrap();
    assert_eq!(answer.kind, MessageType::StreamsOpened);
    let opened: pb::StreamsOpenedHeader = answer.decode_header("streams opened").unwrap();
    assert_eq!(opened.streams.len(), 4);
    assert!(opened.streams[1].error.is_some(), "{:?}", opened.streams[1]);
    for (i, stream) in opened.streams.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert!(stream.error.is_none(), "entry {i}: {stream:?}");
        assert!(
            !stream.opened.clone().unwrap_or_default().chunks.is_empty(),
            "entry {i}"
        );
    }
}

/// A session of application A batching its own location with one of application B: B's entry
/// is refused (PermissionDenied), A's is served, in the open and in the fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_naming_another_applications_location_is_refused_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cluster-secret");
    std::fs::write(
        &secret_file,
        "many-partitions-cluster-secret-many-partitions\n",
    )
    .unwrap();
    let mut options = LocalOptions::new(1, dir.path().join("data"));
    options.master.cluster_secret_file = secret_file.display().to_string();
    options.worker.cluster_secret_file = secret_file.display().to_string();
    let cluster = LocalCluster::start(options).await.unwrap();
    let app_client = |secret: &str| {
        SluiceClient::new(ClientConfig {
            replication: 1,
            app_secret: Some(Secret::new(secret.as_bytes().to_vec())),
            ..ClientConfig::new(cluster.master_addr.clone())
        })
        .unwrap()
    };
    let (key_a, key_b) = (ShuffleKey::new("app-a", 0), ShuffleKey::new("app-b", 0));
    let client_a = app_client("secret of A");
    let client_b = app_client("secret of B");
    common::write_records(&client_a, &key_a, (1, 4), 40, 100).await;
    common::write_records(&client_b, &key_b, (1, 4), 40, 100).await;
    drop(client_a.reader(&key_a, 0..1, None).await.unwrap());
    drop(client_b.reader(&key_b, 0..1, None).await.unwrap());

    let a = app_credentials(&cluster.master_addr, "app-a", "secret of A").await;
    let worker = &cluster.workers()[0];
    let fetch = RpcClient::connect_as(
        &worker.fetch_addr(),
        FrameLimits::default(),
        TIMEOUT,
        Some(&a),
    )
    .await
    .unwrap();
    let (mine, theirs) = (
        location(&key_a, 1, pb::Role::Primary),
        location(&key_b, 1, pb::Role::Primary),
    );
    let answer = fetch
        .call(open_streams(vec![mine.clone(), theirs.clone()]), TIMEOUT)
        .await
        .unwrap();
    let opened: pb::StreamsOpenedHeader = answer.decode_header("streams opened").unwrap();
    assert_eq!(opened.streams.len(), 2);
    let chunks = opened.streams[0].opened.clone().unwrap().chunks;
    assert!(!chunks.is_empty());
    let error = opened.streams[1]
        .error
        .clone()
        .expect("B's location refused");
    assert_eq!(ErrorCode::from_u32(error.code), ErrorCode::PermissionDenied);
    assert!(error.message.contains("app-b"), "{}", error.message);

    // The same ranges asked of B's location: refused for it, served for A's.
    let answer = fetch
        .call(
            fetch_chunks(vec![(mine, chunks[0].clone()), (theirs, chunks[0].clone())]),
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(answer.kind, MessageType::ChunksData);
    let header: pb::ChunksDataHeader = answer.decode_header("chunks data").unwrap();
    let split = split_chunks(&header, answer.body.clone(), 2).unwrap();
    assert!(matches!(&split[0], Ok(bytes) if !bytes.is_empty()));
    assert!(
        matches!(&split[1], Err((ErrorCode::PermissionDenied, _))),
        "{:?}",
        split[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_an_oversized_batch() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalOptions::new(1, dir.path());
    let max_body = options.worker.max_frame_body.as_u64();
    let cluster = LocalCluster::start(options).await.unwrap();
    let worker = &cluster.workers()[0];
    let fetch = RpcClient::connect(&worker.fetch_addr(), FrameLimits::default(), TIMEOUT)
        .await
        .unwrap();
    let key = ShuffleKey::new("oversized", 0);
    let at = |partition| location(&key, partition, pb::Role::Primary);

    let too_many = (0..=MAX_OPEN_STREAMS as u32).map(at).collect();
    let (code, message) = refusal(fetch.call(open_streams(too_many), TIMEOUT).await);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("exceeds the limit"), "{message}");

    let chunk = |length| pb::Chunk {
        ranges: vec![pb::Range { offset: 0, length }],
    };
    let too_many = (0..=MAX_FETCH_CHUNKS as u32)
        .map(|p| (at(p), chunk(1)))
        .collect();
    let (code, message) = refusal(fetch.call(fetch_chunks(too_many), TIMEOUT).await);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("exceeds the limit"), "{message}");

    // Two chunks each within a frame, together above it.
    let half = max_body / 2 + 1;
    let too_big = vec![(at(0), chunk(half)), (at(1), chunk(half))];
    let (code, message) = refusal(fetch.call(fetch_chunks(too_big), TIMEOUT).await);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("bytes exceeds the limit"), "{message}");

    // A batch within the limits naming unknown locations: each entry answered with its error.
    let answer = fetch
        .call(open_streams(vec![at(0), at(1)]), TIMEOUT)
        .await
        .unwrap();
    let opened: pb::StreamsOpenedHeader = answer.decode_header("streams opened").unwrap();
    assert_eq!(opened.streams.len(), 2);
    for stream in &opened.streams {
        let error = stream.error.clone().expect("unknown location");
        assert_eq!(ErrorCode::from_u32(error.code), ErrorCode::NotFound);
    }
}
