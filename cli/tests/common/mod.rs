//! Helpers shared by the integration tests. Each test file uses a part of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sluice::records;
use sluice_protocol::batch::{self, BatchTag};
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{FrameLimits, MessageType};
use sluice_protocol::pb::master_client::MasterClient;
use sluice_protocol::rpc::RpcClient;
use sluice_protocol::{pb, ProtocolResult, ShuffleKey};

/// Every `*.data` file under `dir`, at any depth.
pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "data") {
                out.push(path);
            }
        }
    }
    out
}

// Writing and reading self-checking records through the client.

/// Registers `key` and writes `maps` maps of `per_map` records (40 bytes up to `max_len`) over
/// `partitions`; returns every record id.
pub async fn write_records(
    client: &sluice_client::SluiceClient,
    key: &ShuffleKey,
    (maps, partitions): (u32, u32),
    per_map: u32,
    max_len: usize,
) -> Vec<records::RecordId> {
    let handle = client
        .register_shuffle(key, maps, partitions)
        .await
        .unwrap();
    write_maps(client, &handle, 0..maps, partitions, per_map, max_len).await
}

/// Writes maps `maps` of a registered shuffle as [`write_records`] does; returns their record
/// ids.
pub async fn write_maps(
    client: &sluice_client::SluiceClient,
    handle: &std::sync::Arc<sluice_client::ShuffleHandle>,
    maps: std::ops::Range<u32>,
    partitions: u32,
    per_map: u32,
    max_len: usize,
) -> Vec<records::RecordId> {
    let mut ids = Vec::new();
    for map in maps {
        let mut writer = client.writer(handle.clone(), map, 0).unwrap();
        let mut record = Vec::new();
        for seq in 0..per_map {
            record.clear();
            records::encode(&mut record, map, seq, 40 + (seq as usize * 13) % max_len);
            writer
                .write((seq * 7 + map) % partitions, &record)
                .await
                .unwrap();
            ids.push(records::RecordId { map, seq });
        }
        writer.finish().await.unwrap();
    }
    ids
}

/// Reads `partitions` (maps `maps`, all when `None`) and counts every record; checks each
/// record's bytes.
pub async fn read_records(
    client: &sluice_client::SluiceClient,
    key: &ShuffleKey,
    partitions: std::ops::Range<u32>,
    maps: Option<std::ops::Range<u32>>,
) -> Result<std::collections::HashMap<records::RecordId, usize>, sluice_client::ClientError> {
    let mut reader = client.reader(key, partitions, maps).await?;
    let mut seen = std::collections::HashMap::new();
    while let Some(block) = reader.next().await? {
        records::parse(&block, true, |id, _, intact| {
            assert!(intact, "record {id:?} changed");
            *seen.entry(id).or_insert(0) += 1;
        })
        .unwrap();
    }
    Ok(seen)
}

/// Every id of `ids`, and nothing else, was read exactly once.
pub fn assert_exactly_once(
    ids: &[records::RecordId],
    seen: &std::collections::HashMap<records::RecordId, usize>,
) {
    assert_eq!(seen.len(), ids.len(), "records missing or unknown");
    for id in ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "record {id:?} not read exactly once"
        );
    }
}

// Low-level writing: batches pushed with the data-plane protocol and map ends reported to the
// master by hand, to build states the client's writer never produces (batches that do not
// decode, the same batches in two epochs, copies of one epoch that differ).

/// A batch of map `map` (attempt 0) for `partition` holding records `seqs` of 100 bytes each,
/// LZ4-compressed.
pub fn record_batch(partition: u32, map: u32, batch_id: u32, seqs: std::ops::Range<u32>) -> Bytes {
    let mut raw = Vec::new();
    for seq in seqs {
        records::encode(&mut raw, map, seq, 100);
    }
    let tag = BatchTag {
        partition,
        map_id: map,
        attempt: 0,
        batch_id,
    };
    let (head, bytes) = batch::encode(tag, &raw, batch::Codec::Lz4).unwrap();
    assert_eq!(head.codec, batch::Codec::Lz4);
    bytes
}

/// The totals a writer reports in `MapperEnd` for `batches`.
pub fn stats_of(batches: &[&Bytes]) -> pb::BatchStats {
    let mut stats = pb::BatchStats::default();
    for bytes in batches {
        let head = batch::parse_head(bytes).unwrap();
        stats.add(bytes.len() as u64, head.crc);
    }
    stats
}

/// Pushes `batches` to `partition` at `epoch` on the worker whose push port is `addr`, as a
/// writer (`Primary`: the worker forwards to its replica) or as a primary forwarding
/// (`Replica`: the worker only stores them).
pub async fn push_raw(
    addr: &str,
    key: &ShuffleKey,
    partition: u32,
    epoch: u32,
    role: pb::Role,
    batches: &[&Bytes],
) -> ProtocolResult<()> {
    let header = pb::PushHeader {
        shuffle: Some(key.to_pb()),
        slices: vec![pb::PushSlice {
            partition,
            epoch,
            length: batches.iter().map(|b| b.len() as u32).sum(),
        }],
        role: role as i32,
    };
    let body = batches.iter().map(|b| (*b).clone()).collect();
    let frame = OutFrame::new(MessageType::PushData, 0, &header).with_body(body);
    let timeout = std::time::Duration::from_secs(30);
    let client = RpcClient::connect(addr, FrameLimits::default(), timeout).await?;
    client
        .call_expecting(frame, MessageType::Ack, timeout)
        .await?;
    Ok(())
}

/// Reports the end of map `map_id` attempt `attempt` with `partitions` (partition, totals), as
/// a writer's `finish` does.
pub async fn mapper_end(
    master: &str,
    key: &ShuffleKey,
    map_id: u32,
    attempt: u32,
    partitions: &[(u32, pb::BatchStats)],
) -> pb::MapperEndResponse {
    let mut client = MasterClient::connect(format!("http://{master}"))
        .await
        .unwrap();
    let partitions = partitions
        .iter()
        .map(|(partition, stats)| pb::PartitionStats {
            partition: *partition,
            stats: Some(*stats),
        })
        .collect();
    client
        .mapper_end(pb::MapperEndRequest {
            shuffle: Some(key.to_pb()),
            map_id,
            attempt,
            partitions,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Moves `partition` from `epoch` to a new epoch, as a writer whose push failed does, and
/// returns the new location.
pub async fn revive(
    master: &str,
    key: &ShuffleKey,
    partition: u32,
    epoch: u32,
) -> pb::RevivedLocation {
    let mut client = MasterClient::connect(format!("http://{master}"))
        .await
        .unwrap();
    let response = client
        .revive(pb::ReviveRequest {
            shuffle: Some(key.to_pb()),
            failed: vec![pb::FailedLocation { partition, epoch }],
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    response.locations.into_iter().next().unwrap()
}

// The admin ports.

/// The JSON at `path` of the admin port `addr`, with the answer's status.
pub async fn api(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let answer = sluice::http::get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    (answer.status.as_u16(), answer.json())
}

/// `POST path` on the admin port `addr`, which must answer 200; the answer.
pub async fn post_ok(addr: &str, path: &str) -> sluice::http::Answer {
    let answer = sluice::http::post(addr, path).await.unwrap();
    assert_eq!(answer.status.as_u16(), 200, "POST {path}: {}", answer.body);
    answer
}

/// The JSON at `path` of the admin port `addr`, which must answer 200.
pub async fn api_ok(addr: &str, path: &str) -> serde_json::Value {
    let (status, json) = api(addr, path).await;
    assert_eq!(status, 200, "GET {addr}{path}: {json}");
    json
}

/// Polls `check` every 50 ms until it gives a value; panics after `timeout`, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The entry of `list` (a JSON array under `key`) whose `field` is `value`.
pub fn find<'a>(
    json: &'a serde_json::Value,
    key: &str,
    field: &str,
    value: &serde_json::Value,
) -> Option<&'a serde_json::Value> {
    json[key]
        .as_array()
        .and_then(|items| items.iter().find(|item| &item[field] == value))
}

/// Writes map `map` of `handle` slowly, a small flushed batch to every partition every 100 ms,
/// until `stop`; the map never ends, so the shuffle stays running.
pub fn spawn_slow_writer(
    client: &sluice_client::SluiceClient,
    handle: std::sync::Arc<sluice_client::ShuffleHandle>,
    map: u32,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut writer = client.writer(handle.clone(), map, 0).unwrap();
    let partitions = handle.num_partitions;
    tokio::spawn(async move {
        let mut record = Vec::new();
        let mut seq = 0;
        while !stop.is_cancelled() {
            for partition in 0..partitions {
                record.clear();
                records::encode(&mut record, map, seq, 2_000);
                writer.write(partition, &record).await.unwrap();
                seq += 1;
            }
            writer.flush().await.unwrap();
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = stop.cancelled() => {}
            }
        }
    })
}

// Plain HTTP to admin ports.

/// `GET path` on `addr`: the status code and the body.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[]).await
}

/// `METHOD path` on `addr` with `headers` and no body: the status code and the body.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The sum of every series of `name` whose labels contain `labels` (e.g. `state="active"`;
/// empty: every series).
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l),
                None => (series, ""),
            };
            (series_name == name && series_labels.contains(labels)).then_some(value)
        })
        .map(|value| value.parse::<f64>().unwrap())
        .sum()
}

/// A client of `cluster` writing `replication` copies, retrying fetches quickly.
pub fn client(
    cluster: &sluice::local::LocalCluster,
    replication: u32,
) -> sluice_client::SluiceClient {
    sluice_client::SluiceClient::new(sluice_client::ClientConfig {
        replication,
        fetch_retry_wait: std::time::Duration::from_millis(10),
        ..sluice_client::ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap()
}

/// What application `app` holding `secret` gets from the master: its credentials.
pub async fn app_credentials(
    master: &str,
    app: &str,
    secret: &str,
) -> sluice_protocol::rpc::Credentials {
    use sluice_protocol::auth::{app_key, verifier, Kid, Principal, PrincipalKeys, Secret};
    let mut client =
        sluice_protocol::master_channel::master_client(master, &Default::default()).unwrap();
    let secret = Secret::new(secret.as_bytes().to_vec());
    let answer = client
        .register_application(pb::RegisterApplicationRequest {
            app_id: app.into(),
            verifier: verifier(&app_key(&secret, app)).to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.auth);
    sluice_protocol::rpc::Credentials {
        principal: Principal::App(app.into()),
        keys: PrincipalKeys::app(
            Kid::from_bytes(&answer.kid).unwrap(),
            &Secret::new(answer.token),
        ),
    }
}

/// Runs `sluice bench` with `args` in a temporary directory, requires it to pass, and returns its
/// report (the last line of its output).
pub fn bench_report(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .args(args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}
