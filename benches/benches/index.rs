//! The worker's batch index: entries encoded as the flusher appends them, a whole index file
//! decoded, and chunks cut from it for a full read and for map-range reads.
//!
//! The index is that of one partition file written by 100 maps of 100 batches each, their
//! batches interleaved as pushes arrive; every batch is 100 KiB stored (a 256 KiB batch after
//! LZ4). Throughputs count index entries.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_worker::storage::index::{self, IndexEntry, ENTRY_LEN};

const MAPS: u32 = 100;
const BATCHES_PER_MAP: u32 = 100;
const BATCH_LEN: u32 = 100 * 1024;
/// The worker's default `chunk_size`.
const CHUNK_SIZE: u64 = 4 << 20;

fn entries() -> Vec<IndexEntry> {
    (0..MAPS * BATCHES_PER_MAP)
        .map(|i| IndexEntry {
            map_id: i % MAPS,
            attempt: 0,
            batch_id: i / MAPS,
            offset: u64::from(i) * u64::from(BATCH_LEN),
            length: BATCH_LEN,
        })
        .collect()
}

fn encode_decode(c: &mut Criterion) {
    let entries = entries();
    let mut bytes = Vec::with_capacity(entries.len() * ENTRY_LEN);
    entries.iter().for_each(|e| e.encode_into(&mut bytes));
    let data_len = entries.len() as u64 * u64::from(BATCH_LEN);
    let mut group = c.benchmark_group("index/10k_entries");
    group.throughput(Throughput::Elements(entries.len() as u64));
    let mut out = Vec::with_capacity(bytes.len());
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&entries)
                .iter()
                .for_each(|e| e.encode_into(&mut out));
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| index::decode(black_box(&bytes), data_len).expect("a valid index"))
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let entries = entries();
    let mut group = c.benchmark_group("index/chunks_10k_entries");
    group.throughput(Throughput::Elements(entries.len() as u64));
    // Every map: adjacent batches merge into a few long ranges.
    group.bench_function("all_maps", |b| {
        b.iter(|| index::chunks(black_box(&entries), 0, None, CHUNK_SIZE))
    });
    // A skew split's map range, one map in ten: every batch is a range of its own.
    group.bench_function("map_range_10pct", |b| {
        b.iter(|| index::chunks(black_box(&entries), 40, Some(50), CHUNK_SIZE))
    });
    group.bench_function("one_map", |b| {
        b.iter(|| index::chunks(black_box(&entries), 42, Some(43), CHUNK_SIZE))
    });
    group.finish();
}

criterion_group!(benches, encode_decode, lookup);
criterion_main!(benches);
