//! The reader: decoding a fetched chunk, and whole partitions read through [`ShuffleReader`].
//!
//! - `reader/decode_chunk`: what a reader does with each chunk it fetched, batch by batch: the
//!   walk, the CRC, the partition check and LZ4 decompression, through the protocol functions
//!   the reader's `seen` module calls (the module itself is private to the client). The chunk is
//!   the worker's default 4 MiB.
//! - `reader/read`: every partition of a committed shuffle read by one [`ShuffleReader`] from an
//!   in-process cluster over loopback: fetch requests, prefetch, decode, the dedup of
//!   `(map, batch id)` and the per-map totals checked at the end of each partition. The data
//!   files are in the page cache, so the worker's reads cost little; the worker's and the
//!   reader's work share the machine.
//!
//! Byte throughputs count raw (record) bytes handed out.
//!
//! [`ShuffleReader`]: sluice_client::ShuffleReader

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use sluice_benches::{chunk, records, BenchCluster, BATCH_SIZE};
use sluice_protocol::batch::{self, BatchIter, Codec};
use sluice_protocol::ShuffleKey;

/// The worker's default `chunk_size`.
const CHUNK_SIZE: usize = 4 << 20;
const MAPS: u32 = 4;
const PARTITIONS: u32 = 8;
const BYTES_PER_MAP: usize = 16 << 20;
const RECORD_SIZE: usize = 100;

/// Fills a chunk of about [`CHUNK_SIZE`] with LZ4 batches of the default size.
fn fetched_chunk() -> bytes::Bytes {
    let one = chunk(1, BATCH_SIZE, Codec::Lz4).len();
    chunk((CHUNK_SIZE / one) as u32, BATCH_SIZE, Codec::Lz4)
}

fn decode_chunk(c: &mut Criterion) {
    let fetched = fetched_chunk();
    let raw: u64 = BatchIter::new(fetched.clone())
        .map(|item| u64::from(item.expect("a well-formed chunk").0.raw_len))
        .sum();
    let mut group = c.benchmark_group("reader");
    group.throughput(Throughput::Bytes(raw));
    group.bench_function("decode_chunk_4MiB", |b| {
        b.iter(|| {
            let mut out = 0usize;
            for item in BatchIter::new(black_box(fetched.clone())) {
                let (head, whole) = item.expect("a well-formed chunk");
                batch::verify(&head, &whole).expect("an intact batch");
                assert_eq!(head.partition, 0, "a batch of another partition");
                out += batch::decompress(&head, &whole)
                    .expect("a batch that decompresses")
                    .len();
            }
            out
        })
    });
    group.finish();
}

fn read(c: &mut Criterion) {
    let cluster = BenchCluster::start().expect("starting an in-process cluster");
    let client = cluster.client(|_| {}).expect("a client of the cluster");
    let key = ShuffleKey::new(cluster.app_id().as_str(), 0);
    let written = cluster
        .runtime
        .block_on(async {
            let handle = client.register_shuffle(&key, MAPS, PARTITIONS).await?;
            let mut written = 0u64;
            for map in 0..MAPS {
                let mut writer = client.writer(handle.clone(), map, 0)?;
                let records = records(map, BYTES_PER_MAP, RECORD_SIZE);
                for (seq, record) in records.chunks(RECORD_SIZE).enumerate() {
                    writer.write(seq as u32 % PARTITIONS, record).await?;
                }
                written += writer.finish().await?.raw_bytes.iter().sum::<u64>();
            }
            anyhow::Ok(written)
        })
        .expect("writing the benchmark shuffle");
    let mut group = c.benchmark_group("reader");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(written));
    group.bench_function("read_64MiB_8_partitions", |b| {
        b.iter(|| {
            cluster.runtime.block_on(async {
                let mut reader = client
                    .reader(&key, 0..PARTITIONS, None)
                    .await
                    .expect("opening a reader");
                let mut read = 0u64;
                while let Some(block) = reader.next().await.expect("reading the shuffle") {
                    read += block.len() as u64;
                }
                assert_eq!(
                    read, written,
                    "the reader handed out other bytes than written"
                );
            })
        })
    });
    group.finish();
    if let Err(e) = cluster.runtime.block_on(client.unregister_shuffle(&key)) {
        eprintln!("unregistering the benchmark shuffle failed: {e}");
    }
}

criterion_group!(benches, decode_chunk, read);
criterion_main!(benches);
