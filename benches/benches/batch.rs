//! Batches: built with LZ4, with zstd and stored, verified, decompressed, and walked in a chunk.
//!
//! Byte throughputs count raw (record) bytes for building and decompressing, the stored batch
//! for CRC verification; the walk and the (zero-copy) decoding of a stored batch count batches.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_benches::{chunk, records, BATCH_SIZE};
use sluice_protocol::batch::{self, BatchIter, BatchTag, Codec};

const TAG: BatchTag = BatchTag {
    partition: 3,
    map_id: 1,
    attempt: 0,
    batch_id: 9,
};

/// Batches per chunk in the walk; small (4 KiB) ones, so the walk's per-batch cost shows.
const WALK_BATCHES: u32 = 256;

fn build(c: &mut Criterion) {
    let raw = records(0, BATCH_SIZE, 100);
    let mut group = c.benchmark_group("batch/build_256KiB");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    for (name, codec) in [
        ("lz4", Codec::Lz4),
        ("zstd", Codec::Zstd),
        ("stored", Codec::None),
    ] {
        let mut out = Vec::with_capacity(2 * BATCH_SIZE);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                batch::encode_into(&mut out, TAG, black_box(&raw), codec)
                    .expect("a batch below the limit")
            })
        });
    }
    group.finish();
}

fn verify_and_decompress(c: &mut Criterion) {
    for (name, codec) in [
        ("lz4", Codec::Lz4),
        ("zstd", Codec::Zstd),
        ("stored", Codec::None),
    ] {
        let whole = chunk(1, BATCH_SIZE, codec);
        let head = batch::parse_head(&whole).expect("a valid head");
        let mut group = c.benchmark_group(format!("batch/{name}_256KiB"));
        group.throughput(Throughput::Bytes(whole.len() as u64));
        group.bench_function("verify_crc", |b| {
            b.iter(|| batch::verify(&head, black_box(&whole)).expect("an intact batch"))
        });
        group.throughput(if codec != Codec::None {
            Throughput::Bytes(u64::from(head.raw_len))
        } else {
            // A stored batch's data is handed out as a slice: count batches, not bytes.
            Throughput::Elements(1)
        });
        group.bench_function("decompress", |b| {
            b.iter(|| batch::decompress(&head, black_box(&whole)).expect("an intact batch"))
        });
        group.finish();
    }
}

fn walk(c: &mut Criterion) {
    let buf = chunk(WALK_BATCHES, 4096, Codec::Lz4);
    let mut group = c.benchmark_group("batch/iter_4KiB_batches");
    group.throughput(Throughput::Elements(u64::from(WALK_BATCHES)));
    group.bench_function("walk", |b| {
        b.iter(|| {
            BatchIter::new(black_box(buf.clone()))
                .map(|item| item.expect("a well-formed chunk").0.data_len)
                .sum::<u32>()
        })
    });
    group.finish();
}

criterion_group!(benches, build, verify_and_decompress, walk);
criterion_main!(benches);
