//! The writer's per-record cost: [`ShuffleWriter::write`] of one record, buffer append and, every
//! `batch_size` bytes of a partition, the batch cut (LZ4 and CRC) included.
//!
//! The writer belongs to a shuffle registered with an in-process cluster, but its push size is
//! set beyond reach, so no push is ever sent: what is timed is the work the map task's own thread
//! does per record, without the network and the worker, which `sluice bench` measures. A writer
//! goes on across criterion's samples and is replaced (dropped with what it holds) every
//! [`BATCHES_PER_WRITER`] batches per partition, which bounds memory; the replacement is timed
//! too. Records are those of `sluice bench`, spread over [`PARTITIONS`] partitions in a
//! pseudo-random order, and no record repeats within a writer's lifetime: repeats inside a batch
//! would make LZ4 look faster than it is on real data. One iteration is one record.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use sluice_benches::{records, BenchCluster, BATCH_SIZE};
use sluice_protocol::batch::Codec;
use sluice_protocol::ShuffleKey;

const PARTITIONS: u32 = 32;
/// Batches cut per partition before the writer is replaced.
const BATCHES_PER_WRITER: usize = 4;
/// Partition choices cycled through.
const CHOICES: usize = 4096;

fn write(c: &mut Criterion) {
    let cluster = BenchCluster::start().expect("starting an in-process cluster");
    let mut group = c.benchmark_group("writer/write");
    // Every sample the same number of records, and the figure their mean: the cost is mostly in
    // rare, large steps (a batch cut every few dozen records, a writer replaced every few hundred
    // thousand), which samples of equal size share evenly.
    group.sampling_mode(SamplingMode::Flat);
    for (codec, compression) in [
        ("lz4", Codec::Lz4),
        ("zstd", Codec::Zstd),
        ("none", Codec::None),
    ] {
        for record_size in [100usize, 1000] {
            let client = cluster
                .client(|config| {
                    config.compression = compression;
                    config.batch_size = BATCH_SIZE;
                    config.push_size = usize::MAX;
                })
                .expect("a client of the cluster");
            let key = ShuffleKey::new(cluster.app_id().as_str(), 0);
            let handle = cluster
                .runtime
                .block_on(client.register_shuffle(&key, 1, PARTITIONS))
                .expect("registering the benchmark shuffle");
            let per_writer = BATCHES_PER_WRITER * PARTITIONS as usize * BATCH_SIZE / record_size;
            // Distinct records for two writers' lifetimes, cycled through.
            let pool = records(0, 2 * per_writer * record_size, record_size);
            let pool_records = pool.len() / record_size;
            let mut state = 0x9E37_79B9_7F4A_7C15_u64;
            let partitions: Vec<u32> = (0..CHOICES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % u64::from(PARTITIONS)) as u32
                })
                .collect();
            group.throughput(Throughput::Bytes(record_size as u64));
            let new_writer = || {
                client
                    .writer(handle.clone(), 0, 0)
                    .expect("a writer of map 0")
            };
            // One writer goes on across criterion's samples (criterion calls the closure below
            // once per sample), so every sample sees the steady state, buffers part full and
            // batch cuts at their usual rate, and not a new writer's first records, which cut no
            // batch.
            let mut writer = new_writer();
            let mut written = 0usize;
            group.bench_function(format!("{codec}_{record_size}B"), |b| {
                b.iter_custom(|iters| {
                    cluster.runtime.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            if written > 0 && written % per_writer == 0 {
                                writer = new_writer();
                            }
                            let slot = written % pool_records;
                            let record = &pool[slot * record_size..(slot + 1) * record_size];
                            writer
                                .write(partitions[written % CHOICES], record)
                                .await
                                .expect("a write that sends nothing");
                            written += 1;
                        }
                        started.elapsed()
                    })
                })
            });
            // The shuffle is never committed; dropping it on the master frees its placement.
            if let Err(e) = cluster.runtime.block_on(client.unregister_shuffle(&key)) {
                eprintln!("unregistering the benchmark shuffle failed: {e}");
            }
        }
    }
    group.finish();
}

criterion_group!(benches, write);
criterion_main!(benches);
