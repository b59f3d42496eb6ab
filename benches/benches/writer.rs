//! The writer's per-record cost: [`ShuffleWriter::write`] of one record, buffer append and, every
//! `batch_size` bytes of a partition, the batch cut (LZ4 and CRC) included.
//!
//! The writer belongs to a shuffle registered with an in-process cluster, but its push size is
//! set beyond reach, so no push is ever sent: what is timed is the work the map task's own thread
//! does per record, without the network and the worker, which `sluice bench` measures. A writer
//! is replaced (dropped with what it holds) every [`BATCHES_PER_WRITER`] batches per partition,
//! which bounds memory; the replacement is timed too. Records are those of `sluice bench`,
//! spread over [`PARTITIONS`] partitions in a pseudo-random order. One iteration is one record.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_benches::{records, BenchCluster, BATCH_SIZE};
use sluice_protocol::ShuffleKey;

const PARTITIONS: u32 = 32;
/// Batches cut per partition before the writer is replaced.
const BATCHES_PER_WRITER: usize = 4;
/// Distinct records and partition choices cycled through (a power of two).
const POOL: usize = 4096;

fn write(c: &mut Criterion) {
    let cluster = BenchCluster::start().expect("starting an in-process cluster");
    let mut group = c.benchmark_group("writer/write");
    for (codec, compression) in [("lz4", true), ("none", false)] {
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
            let pool = records(0, POOL * record_size, record_size);
            let mut state = 0x9E37_79B9_7F4A_7C15_u64;
            let partitions: Vec<u32> = (0..POOL)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % u64::from(PARTITIONS)) as u32
                })
                .collect();
            let per_writer =
                (BATCHES_PER_WRITER * PARTITIONS as usize * BATCH_SIZE / record_size) as u64;
            group.throughput(Throughput::Bytes(record_size as u64));
            group.bench_function(format!("{codec}_{record_size}B"), |b| {
                b.iter_custom(|iters| {
                    cluster.runtime.block_on(async {
                        let new_writer = || {
                            client
                                .writer(handle.clone(), 0, 0)
                                .expect("a writer of map 0")
                        };
                        let started = Instant::now();
                        let mut writer = new_writer();
                        for i in 0..iters {
                            if i > 0 && i % per_writer == 0 {
                                writer = new_writer();
                            }
                            let slot = i as usize % POOL;
                            let record = &pool[slot * record_size..(slot + 1) * record_size];
                            writer
                                .write(partitions[slot], record)
                                .await
                                .expect("a write that sends nothing");
                        }
                        drop(writer);
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
