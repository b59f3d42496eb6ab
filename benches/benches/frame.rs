//! The frame codec: heads, whole frames, and the async reader and writer over memory.
//!
//! The frames are merged pushes as a writer sends them: a `PushHeader` naming four slices and a
//! body of four 256 KiB batches (1 MiB, the default push size), with the frame CRC on. Byte
//! throughputs count the whole frame.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_benches::{chunk, current_thread, BATCH_SIZE, PUSH_SIZE};
use sluice_protocol::batch::{BatchIter, Codec};
use sluice_protocol::connection::{FrameReader, FrameWriter, OutFrame};
use sluice_protocol::frame::{self, FrameLimits, MessageType};
use sluice_protocol::{pb, ShuffleKey};

/// Frames the reader benchmark reads back to back from one buffer.
const FRAMES_PER_STREAM: usize = 16;

/// A merged push of `PUSH_SIZE / BATCH_SIZE` compressed batches, one per slice.
fn push_frame() -> OutFrame {
    let batches: Vec<Bytes> = BatchIter::new(chunk(
        (PUSH_SIZE / BATCH_SIZE) as u32,
        BATCH_SIZE,
        Codec::Lz4,
    ))
    .map(|item| item.expect("a well-formed chunk").1)
    .collect();
    let header = pb::PushHeader {
        shuffle: Some(ShuffleKey::new("bench", 0).to_pb()),
        slices: batches
            .iter()
            .enumerate()
            .map(|(p, b)| pb::PushSlice {
                partition: p as u32,
                epoch: 0,
                length: b.len() as u32,
            })
            .collect(),
        role: pb::Role::Primary as i32,
    };
    OutFrame::new(MessageType::PushMergedData, 7, &header).with_body(batches)
}

fn encoded(frame: &OutFrame) -> Vec<u8> {
    frame::encode_to_vec(
        frame.kind,
        frame.request_id,
        &frame.header,
        &frame.body,
        frame.with_crc,
    )
    .expect("a frame within the wire format's lengths")
}

fn heads(c: &mut Criterion) {
    let push = push_frame();
    let head = frame::head_for(push.kind, 1, &push.header, &push.body, true).expect("lengths fit");
    let bytes = head.encode();
    let limits = FrameLimits::default();
    let mut group = c.benchmark_group("frame/head");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| {
        b.iter(|| black_box(black_box(&head).encode()))
    });
    group.bench_function("check", |b| {
        b.iter(|| frame::check(black_box(&bytes[..]), &limits).expect("a valid head"))
    });
    group.finish();
}

fn whole_frames(c: &mut Criterion) {
    let push = push_frame();
    let with_crc = encoded(&push);
    let without_crc = encoded(&push.clone().without_crc());
    let limits = FrameLimits::default();
    let mut group = c.benchmark_group("frame/push_1MiB");
    group.throughput(Throughput::Bytes(with_crc.len() as u64));
    // The head of an outgoing frame: what `FrameWriter::write_frame` computes before writing,
    // the CRC over header and body being nearly all of it.
    group.bench_function("head_for_crc", |b| {
        b.iter(|| frame::head_for(push.kind, 1, &push.header, black_box(&push.body), true))
    });
    group.bench_function("encode_to_vec", |b| b.iter(|| encoded(black_box(&push))));
    for (name, bytes) in [("parse_crc", &with_crc), ("parse_no_crc", &without_crc)] {
        if name == "parse_no_crc" {
            // Zero-copy: the time does not grow with the frame, so count frames, not bytes.
            group.throughput(Throughput::Elements(1));
        }
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&bytes[..]),
                |mut buf| frame::parse(&mut buf, &limits).expect("a valid frame"),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// The connection halves over memory: frames written into a sink and read from a buffer of
/// frames back to back, so the figures are the codec's and the buffering's, not a socket's.
fn streams(c: &mut Criterion) {
    let runtime = current_thread();
    let push = push_frame();
    let one = encoded(&push);
    let stream: Vec<u8> = one.repeat(FRAMES_PER_STREAM);
    let mut group = c.benchmark_group("frame/stream");
    group.throughput(Throughput::Bytes(one.len() as u64));
    group.bench_function("write_frame", |b| {
        let mut writer = FrameWriter::new(tokio::io::sink());
        b.iter(|| {
            runtime.block_on(async {
                writer
                    .write_frame(&push)
                    .await
                    .expect("a sink takes anything");
                writer.flush().await.expect("a sink takes anything");
            })
        })
    });
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("read_frame_x16", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut reader = FrameReader::new(&stream[..], FrameLimits::default());
                let mut frames = 0;
                while let Some(frame) = reader.read_frame().await.expect("valid frames") {
                    black_box(frame);
                    frames += 1;
                }
                assert_eq!(frames, FRAMES_PER_STREAM);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, heads, whole_frames, streams);
criterion_main!(benches);
