//! Writes a few valid inputs per fuzz target into `seeds/<target>/`, built with the project's
//! own encoders so they follow the formats as they are. Run from `fuzz/`:
//! `cargo run --example seeds`. The files are committed; rerun after a format change.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use sluice_master::MasterConfig;
use sluice_protocol::batch;
use sluice_protocol::frame::{self, MessageType};
use sluice_protocol::pb;
use sluice_worker::storage::index::IndexEntry;
use sluice_worker::WorkerConfig;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    std::fs::create_dir_all(&dir).expect("creating the seed directory");
    std::fs::write(dir.join(name), bytes).expect("writing a seed");
}

fn frame(kind: MessageType, id: u64, header: &impl Message, body: &[u8], crc: bool) -> Vec<u8> {
    let body = [Bytes::copy_from_slice(body)];
    frame::encode_to_vec(kind, id, &header.encode_to_vec(), &body, crc).expect("encoding a frame")
}

fn prefixed(first: &[u8], rest: &[u8]) -> Vec<u8> {
    [first, rest].concat()
}

/// Three batches back to back: compressed, stored, and empty.
fn batches() -> Vec<u8> {
    let mut out = Vec::new();
    let text = b"sluice shuffles records ".repeat(8);
    let tag = |map_id, attempt, batch_id| batch::BatchTag {
        partition: 0,
        map_id,
        attempt,
        batch_id,
    };
    batch::encode_into(&mut out, tag(1, 0, 0), &text, batch::Codec::Lz4).expect("batch");
    batch::encode_into(&mut out, tag(1, 0, 1), b"short record", batch::Codec::Lz4).expect("batch");
    batch::encode_into(&mut out, tag(2, 1, 0), b"", batch::Codec::Lz4).expect("batch");
    out
}

fn key() -> Option<pb::ShuffleKey> {
    Some(pb::ShuffleKey {
        app_id: "app-1".into(),
        shuffle_id: 3,
    })
}

fn location() -> Option<pb::LocationRef> {
    Some(pb::LocationRef {
        shuffle: key(),
        partition: 4,
        epoch: 1,
        role: pb::Role::Primary as i32,
    })
}

fn chunk() -> pb::Chunk {
    pb::Chunk {
        ranges: vec![
            pb::Range {
                offset: 0,
                length: 100,
            },
            pb::Range {
                offset: 200,
                length: 50,
            },
        ],
    }
}

fn spec() -> pb::LocationSpec {
    pb::LocationSpec {
        partition: 4,
        epoch: 1,
        role: pb::Role::Primary as i32,
        replica: Some(pb::WorkerInfo {
            id: "w2".into(),
            host: "127.0.0.1".into(),
            push_port: 9098,
            fetch_port: 9099,
            ..Default::default()
        }),
    }
}

fn main() {
    let batches = batches();
    let push = pb::PushHeader {
        shuffle: key(),
        slices: vec![pb::PushSlice {
            partition: 4,
            epoch: 1,
            length: batches.len() as u32,
        }],
        role: pb::Role::Primary as i32,
    };

    // Frames.
    let ack = frame(MessageType::Ack, 1, &pb::Ack {}, b"", batch::Codec::Lz4);
    let pushed = frame(MessageType::PushMergedData, 2, &push, &batches, true);
    let chunk_data = frame(MessageType::ChunkData, 3, &pb::Ack {}, &batches, false);
    let stream = [ack.clone(), pushed.clone(), chunk_data.clone()].concat();
    for (limits, tag) in [(0u8, "default"), (1, "small")] {
        write("frame", &format!("ack-{tag}"), &prefixed(&[limits], &ack));
        write(
            "frame",
            &format!("push-{tag}"),
            &prefixed(&[limits], &pushed),
        );
        write(
            "frame",
            &format!("stream-{tag}"),
            &prefixed(&[limits], &stream),
        );
        write(
            "frame_reader",
            &format!("stream-{tag}"),
            &prefixed(&[limits, 3, 1, 29, 200], &stream),
        );
    }
    write(
        "frame_reader",
        "truncated",
        &prefixed(&[0, 1, 7], &pushed[..pushed.len() - 3]),
    );

    // Headers, one per type, numbered as the headers target picks them.
    let headers: [Vec<u8>; 8] = [
        push.encode_to_vec(),
        pb::ReserveHeader {
            shuffle: key(),
            locations: vec![spec()],
        }
        .encode_to_vec(),
        pb::CommitHeader {
            shuffle: key(),
            locations: vec![spec()],
        }
        .encode_to_vec(),
        pb::DestroyHeader {
            app_id: "app-1".into(),
            shuffle_id: Some(3),
        }
        .encode_to_vec(),
        pb::OpenStreamHeader {
            location: location(),
            start_map: 0,
            end_map: Some(10),
            index_offset: 0,
        }
        .encode_to_vec(),
        pb::FetchChunkHeader {
            location: location(),
            chunk: Some(chunk()),
        }
        .encode_to_vec(),
        pb::CommittedHeader {
            locations: vec![pb::CommittedSpec {
                location: Some(spec()),
                stats: Some(pb::BatchStats {
                    bytes: 250,
                    batches: 3,
                    checksum: 12345,
                }),
                ok: true,
                error: String::new(),
            }],
        }
        .encode_to_vec(),
        pb::StreamOpenedHeader {
            chunks: vec![chunk(), chunk()],
            file_length: 250,
            next_index_offset: Some(48),
        }
        .encode_to_vec(),
    ];
    for (i, header) in headers.iter().enumerate() {
        write(
            "headers",
            &format!("type-{i}"),
            &prefixed(&[i as u8], header),
        );
    }
    // The batched fetch headers, numbered 8 to 11.
    let open = pb::OpenStreamHeader {
        location: location(),
        start_map: 0,
        end_map: None,
        index_offset: 0,
    };
    let batched: [Vec<u8>; 3] = [
        pb::OpenStreamsHeader {
            streams: vec![open.clone(), open],
        }
        .encode_to_vec(),
        pb::FetchChunksHeader {
            chunks: vec![
                pb::FetchChunkHeader {
                    location: location(),
                    chunk: Some(chunk()),
                };
                2
            ],
        }
        .encode_to_vec(),
        pb::StreamsOpenedHeader {
            streams: vec![
                pb::OpenedStream {
                    opened: Some(pb::StreamOpenedHeader {
                        chunks: vec![chunk()],
                        file_length: 250,
                        next_index_offset: None,
                    }),
                    error: None,
                },
                pb::OpenedStream {
                    opened: None,
                    error: Some(pb::ErrorHeader {
                        code: 3,
                        message: "no such location".into(),
                    }),
                },
            ],
        }
        .encode_to_vec(),
    ];
    for (i, header) in batched.iter().enumerate() {
        let i = i + 8;
        write(
            "headers",
            &format!("type-{i}"),
            &prefixed(&[i as u8], header),
        );
    }
    let answer = pb::ChunksDataHeader {
        chunks: vec![
            pb::ChunkAnswer {
                length: 3,
                error: None,
            },
            pb::ChunkAnswer {
                length: 0,
                error: Some(pb::ErrorHeader {
                    code: 11,
                    message: "denied".into(),
                }),
            },
            pb::ChunkAnswer {
                length: 2,
                error: None,
            },
        ],
    }
    .encode_to_vec();
    let mut input = vec![11, answer.len() as u8];
    input.extend_from_slice(&answer);
    input.extend_from_slice(b"abcde");
    write("headers", "type-11", &input);

    // Push frames: header length, header, body.
    let header = push.encode_to_vec();
    let mut input = (header.len() as u16).to_be_bytes().to_vec();
    input.extend_from_slice(&header);
    input.extend_from_slice(&batches);
    write("push", "one-slice", &input);
    let split = batch::parse_head(&batches)
        .expect("first batch")
        .total_len();
    let two = pb::PushHeader {
        slices: vec![
            pb::PushSlice {
                partition: 4,
                epoch: 1,
                length: split as u32,
            },
            pb::PushSlice {
                partition: 5,
                epoch: 1,
                length: (batches.len() - split) as u32,
            },
        ],
        ..push.clone()
    }
    .encode_to_vec();
    let mut input = (two.len() as u16).to_be_bytes().to_vec();
    input.extend_from_slice(&two);
    input.extend_from_slice(&batches);
    write("push", "two-slices", &input);

    // Batches, as they are and with CRCs to be recomputed.
    write("batch", "batches", &prefixed(&[0], &batches));
    write("batch", "batches-fix-crc", &prefixed(&[1], &batches));

    // An index of the three batches, and the chunks asked of it.
    let mut index = Vec::new();
    let mut offset = 0u64;
    let mut rest = &batches[..];
    while !rest.is_empty() {
        let head = batch::parse_head(rest).expect("batch head");
        IndexEntry::for_batch(&head, offset).encode_into(&mut index);
        offset += head.total_len() as u64;
        rest = &rest[head.total_len()..];
    }
    for (name, start, end, chunk_size) in [("all", 0u8, 0u8, 64u32), ("map-1", 1, 2, 1 << 20)] {
        let mut input = (offset as u32).to_be_bytes().to_vec();
        input.extend_from_slice(&[start, end]);
        input.extend_from_slice(&chunk_size.to_be_bytes());
        input.extend_from_slice(&index);
        write("index", name, &input);
    }

    // Commit markers, as `CommitMarker::write` formats them.
    write(
        "commit_marker",
        "created",
        format!(
            "sluice-committed-v1 {offset} {} {offset} 3 987654321 1\n",
            index.len()
        )
        .as_bytes(),
    );
    write(
        "commit_marker",
        "empty",
        b"sluice-committed-v1 0 0 0 0 0 0\n",
    );

    // Configs.
    let worker = toml::to_string(&WorkerConfig::default()).expect("worker defaults");
    let master = toml::to_string(&MasterConfig::default()).expect("master defaults");
    write("config_toml", "worker", &prefixed(b"0", worker.as_bytes()));
    write("config_toml", "master", &prefixed(b"1", master.as_bytes()));
    write(
        "config_load",
        "worker",
        format!(
            "0{worker}\0MEMORY_BUDGET=2GiB\nDATA_DIRS=/a,/b\nFSYNC_ON_COMMIT=true\0--chunk-size\n1MiB\n--heartbeat-interval=250ms"
        )
        .as_bytes(),
    );
    write(
        "config_load",
        "master",
        format!("1{master}\0WORKER_TIMEOUT=10s\0--max-maps=100\n--listen\n127.0.0.1:0").as_bytes(),
    );
}
