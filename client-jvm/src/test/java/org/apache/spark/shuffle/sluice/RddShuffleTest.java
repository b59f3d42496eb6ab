package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import com.codahale.metrics.Gauge;

import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.LongAdder;
import org.apache.spark.HashPartitioner;
import org.apache.spark.SparkEnv;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.executor.TaskMetrics;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.junit.jupiter.api.Test;
import scala.Tuple2;

/**
 * RDD shuffles through Sluice give exactly the answers of Spark's own shuffle: the pair-RDD
 * operators, partition placement (every answer row carries the reduce partition it was read
 * from), empty partitions and empty shuffles, 10,000 partitions, and records far larger than a
 * push batch. The native client's metrics reach Spark's metrics system.
 */
class RddShuffleTest extends ShuffleSuite {

  /** {@code (reducePartition|key|value)} rows of a pair RDD, sorted. */
  static <K, V> List<String> rowsByPartition(JavaPairRDD<K, V> rdd) {
    return Data.sortedCopy(
        rdd.mapPartitionsWithIndex(
                (Integer pid, Iterator<Tuple2<K, V>> it) -> {
                  List<String> out = new ArrayList<>();
                  while (it.hasNext()) {
                    Tuple2<K, V> t = it.next();
                    out.add(pid + "|" + t._1() + "|" + t._2());
                  }
                  return out.iterator();
                },
                false)
            .collect());
  }

  static final ShuffleJob<List<String>> GROUP_BY_KEY =
      ShuffleJob.of(
          "groupByKey",
          spark ->
              rowsByPartition(
                  Data.ids(spark, 4, 50_000)
                      .mapToPair(id -> new Tuple2<>(Data.key(id, 2000), id))
                      .groupByKey(8)
                      .mapValues(values -> Data.sorted(values).toString())));

  static final ShuffleJob<List<String>> REDUCE_BY_KEY =
      ShuffleJob.of(
          "reduceByKey",
          spark ->
              rowsByPartition(
                  Data.ids(spark, 4, 100_000)
                      .mapToPair(id -> new Tuple2<>("key-" + Data.key(id, 5000), id))
                      .reduceByKey(Long::sum, 6)));

  /** count, sum, min, max per key, combined on the map side first. */
  static final ShuffleJob<List<String>> COMBINE_BY_KEY =
      ShuffleJob.of(
          "combineByKey",
          spark ->
              rowsByPartition(
                  Data.ids(spark, 4, 50_000)
                      .mapToPair(id -> new Tuple2<>(Data.key(id, 300), id))
                      .combineByKey(
                          (Long v) -> new long[] {1, v, v, v},
                          (long[] c, Long v) -> {
                            c[0] += 1;
                            c[1] += v;
                            c[2] = Math.min(c[2], v);
                            c[3] = Math.max(c[3], v);
                            return c;
                          },
                          (long[] a, long[] b) ->
                              new long[] {
                                a[0] + b[0], a[1] + b[1], Math.min(a[2], b[2]), Math.max(a[3], b[3])
                              },
                          new HashPartitioner(5),
                          true, // map-side combine
                          null) // the default serializer
                      .mapValues(Arrays::toString)));

  /** Round-robin redistribution: which element lands in which partition is deterministic. */
  static final ShuffleJob<List<String>> REPARTITION =
      ShuffleJob.of(
          "repartition",
          spark ->
              rowsByPartition(
                  Data.ids(spark, 3, 30_000)
                      .map(id -> Data.text(id, 8) + "-" + id)
                      .repartition(7)
                      .mapToPair(s -> new Tuple2<>(s, 1))));

  /**
   * Globally ordered: compared in order. (The range bounds come from a sample seeded with the
   * RDD id, which differs between sessions, so which partition a key lands in is not compared.)
   */
  static final ShuffleJob<List<String>> SORT_BY_KEY =
      ShuffleJob.of(
          "sortByKey",
          spark ->
              Data.ids(spark, 4, 50_000)
                  .mapToPair(id -> new Tuple2<>(Data.mix(id), id)) // unique keys
                  .sortByKey(true, 6)
                  .map(t -> t._1() + "|" + t._2())
                  .collect());

  static final ShuffleJob<List<String>> SORT_BY_KEY_DESCENDING =
      ShuffleJob.of(
          "sortByKey descending",
          spark ->
              Data.ids(spark, 3, 20_000)
                  .mapToPair(id -> new Tuple2<>(Data.text(id, 6) + "-" + id, id))
                  .sortByKey(false, 5)
                  .map(t -> t._1() + "|" + t._2())
                  .collect());

  static final ShuffleJob<List<String>> JOIN =
      ShuffleJob.of(
          "join",
          spark -> {
            JavaPairRDD<Integer, String> left =
                Data.ids(spark, 3, 10_000).mapToPair(id -> new Tuple2<>(Data.key(id, 3000), "L" + id));
            JavaPairRDD<Integer, String> right =
                Data.ids(spark, 2, 4_000)
                    .mapToPair(id -> new Tuple2<>(Data.key(id + 1_000_000, 4000), "R" + id));
            return rowsByPartition(left.join(right, 5));
          });

  static final ShuffleJob<List<String>> COGROUP =
      ShuffleJob.of(
          "cogroup",
          spark -> {
            JavaPairRDD<Integer, Long> a =
                Data.ids(spark, 3, 5_000).mapToPair(id -> new Tuple2<>(Data.key(id, 1000), id));
            JavaPairRDD<Integer, String> b =
                Data.ids(spark, 2, 3_000).mapToPair(id -> new Tuple2<>(Data.key(id + 7, 1500), "b" + id));
            JavaPairRDD<Integer, Long> c =
                Data.ids(spark, 1, 1_000).mapToPair(id -> new Tuple2<>(Data.key(id + 13, 800), -id));
            return rowsByPartition(
                a.cogroup(b, c, new HashPartitioner(4))
                    .mapValues(
                        t ->
                            Data.sorted(t._1())
                                + " "
                                + Data.sorted(t._2())
                                + " "
                                + Data.sorted(t._3())));
          });

  /**
   * 7 keys into 500 partitions, from 8 map tasks of which only 2 have data: almost every map
   * writes nothing to almost every partition, and 6 maps write nothing at all. One row per
   * reduce partition, empty or not.
   */
  static final ShuffleJob<List<String>> EMPTY_PARTITIONS =
      ShuffleJob.of(
          "empty partitions",
          spark ->
              Data.ids(spark, 8, 1_000)
                  .filter(id -> id / 1_000 == 2 || id / 1_000 == 5)
                  .mapToPair(id -> new Tuple2<>(id % 7, id))
                  .partitionBy(new HashPartitioner(500))
                  .mapPartitionsWithIndex(RddShuffleTest::countAndSum, false)
                  .collect());

  /** A shuffle in which no map writes anything. */
  static final ShuffleJob<List<String>> EMPTY_SHUFFLE =
      ShuffleJob.of(
          "empty shuffle",
          spark ->
              Data.jsc(spark)
                  .parallelize(Collections.<Long>emptyList(), 4)
                  .mapToPair(id -> new Tuple2<>(id % 7, id))
                  .reduceByKey(Long::sum, 3)
                  .mapPartitionsWithIndex(RddShuffleTest::countAndSum, false)
                  .collect());

  /**
   * 10,000 reduce partitions, each read on its own (coalesce without a shuffle runs many
   * partitions' readers in one task, so the job needs 16 reduce tasks, not 10,000).
   */
  static final ShuffleJob<List<String>> TEN_THOUSAND_PARTITIONS =
      ShuffleJob.of(
          "10,000 partitions",
          spark ->
              Data.ids(spark, 4, 25_000)
                  .mapToPair(id -> new Tuple2<>(Data.mix(id), id))
                  .partitionBy(new HashPartitioner(10_000))
                  .mapPartitionsWithIndex(RddShuffleTest::countAndSum, false)
                  .coalesce(16)
                  .collect());

  /** Sizes around and far above the 256 KiB push batch, and empty. */
  static final int[] LARGE_SIZES = {
    262_143, 262_144, 262_145, 1 << 20, 3 << 20, 5 << 20, (2 << 20) + 7, 4 << 20, 700_000, 1, 0,
    6 << 20
  };

  /**
   * Twelve values of up to 6 MiB among small records, grouped: each key's values come back as
   * (length, SHA-256) pairs.
   */
  static final ShuffleJob<List<String>> LARGE_RECORDS =
      ShuffleJob.of(
          "records larger than a push batch",
          spark ->
              rowsByPartition(
                  Data.ids(spark, 3, 4)
                      .flatMapToPair(
                          id -> {
                            List<Tuple2<Integer, byte[]>> out = new ArrayList<>();
                            for (int j = 0; j < 200; j++) {
                              long small = id * 1_000 + j;
                              out.add(new Tuple2<>(Data.key(small, 4), bytes(small, 100)));
                              if (j == 100) {
                                out.add(new Tuple2<>((int) (id % 4), bytes(id, LARGE_SIZES[id.intValue()])));
                              }
                            }
                            return out.iterator();
                          })
                      .groupByKey(3)
                      .mapValues(
                          values -> {
                            List<String> digests = new ArrayList<>();
                            for (byte[] v : values) {
                              digests.add(v.length + ":" + sha256(v));
                            }
                            Collections.sort(digests);
                            return digests.toString();
                          })));

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(
        GROUP_BY_KEY,
        REDUCE_BY_KEY,
        COMBINE_BY_KEY,
        REPARTITION,
        SORT_BY_KEY,
        SORT_BY_KEY_DESCENDING,
        JOIN,
        COGROUP,
        EMPTY_PARTITIONS,
        EMPTY_SHUFFLE,
        TEN_THOUSAND_PARTITIONS,
        LARGE_RECORDS);
  }

  @Test
  void groupByKey() throws Exception {
    assertEquals(2000, assertMatchesBuiltin(GROUP_BY_KEY).size());
  }

  @Test
  void reduceByKey() throws Exception {
    assertEquals(5000, assertMatchesBuiltin(REDUCE_BY_KEY).size());
  }

  @Test
  void sparkMetricsShowTheBytesTheClientPushed() throws Exception {
    assumeFalse(TestSessions.BUILTIN_ONLY, "no Sluice client in builtin-only mode");
    assertMatchesBuiltin(REDUCE_BY_KEY);
    var sources = SparkEnv.get().metricsSystem().getSourcesByName(SluiceMetricsSource.SOURCE_NAME);
    assertFalse(sources.isEmpty(), "the sluice metrics source is not registered");
    Gauge<?> pushBytes = sources.head().metricRegistry().getGauges().get("pushBytes");
    assertNotNull(pushBytes, "no pushBytes gauge");
    long value = (Long) pushBytes.getValue();
    assertTrue(value > 0, "pushBytes " + value);
  }

  /**
   * A task's shuffle read size is the stored size of what it read, as with Spark's own shuffle,
   * so a stage that reads a whole shuffle once reports what the maps wrote (not the decoded,
   * larger size).
   */
  @Test
  void theShuffleReadSizeIsTheShuffleWriteSize() throws Exception {
    assumeFalse(TestSessions.BUILTIN_ONLY, "no Sluice client in builtin-only mode");
    LongAdder written = new LongAdder();
    LongAdder read = new LongAdder();
    SparkListener sizes =
        new SparkListener() {
          @Override
          public void onTaskEnd(SparkListenerTaskEnd end) {
            TaskMetrics metrics = end.taskMetrics();
            if (metrics != null) {
              written.add(metrics.shuffleWriteMetrics().bytesWritten());
              read.add(
                  metrics.shuffleReadMetrics().remoteBytesRead()
                      + metrics.shuffleReadMetrics().localBytesRead());
            }
          }
        };
    spark.sparkContext().addSparkListener(sizes);
    try {
      assertMatchesBuiltin(REDUCE_BY_KEY);
      spark.sparkContext().listenerBus().waitUntilEmpty(60_000);
    } finally {
      spark.sparkContext().removeSparkListener(sizes);
    }
    assertTrue(written.sum() > 0, "no shuffle bytes written");
    assertEquals(written.sum(), read.sum(), "shuffle bytes read against written");
  }

  @Test
  void combineByKeyWithMapSideCombine() throws Exception {
    assertEquals(300, assertMatchesBuiltin(COMBINE_BY_KEY).size());
  }

  @Test
  void repartition() throws Exception {
    assertEquals(90_000, assertMatchesBuiltin(REPARTITION).size());
  }

  @Test
  void sortByKey() throws Exception {
    assertEquals(200_000, assertMatchesBuiltin(SORT_BY_KEY).size());
  }

  @Test
  void sortByKeyDescending() throws Exception {
    assertEquals(60_000, assertMatchesBuiltin(SORT_BY_KEY_DESCENDING).size());
  }

  @Test
  void join() throws Exception {
    assertTrue(assertMatchesBuiltin(JOIN).size() > 10_000);
  }

  @Test
  void cogroup() throws Exception {
    assertTrue(assertMatchesBuiltin(COGROUP).size() > 1000);
  }

  @Test
  void emptyPartitions() throws Exception {
    List<String> rows = assertMatchesBuiltin(EMPTY_PARTITIONS);
    assertEquals(500, rows.size());
    long empty = rows.stream().filter(r -> r.split("\\|")[1].equals("0")).count();
    assertTrue(empty >= 493, "expected at least 493 empty partitions, got " + empty);
  }

  @Test
  void emptyShuffle() throws Exception {
    assertEquals(List.of("0|0|0", "1|0|0", "2|0|0"), assertMatchesBuiltin(EMPTY_SHUFFLE));
  }

  @Test
  void tenThousandPartitions() throws Exception {
    assertEquals(10_000, assertMatchesBuiltin(TEN_THOUSAND_PARTITIONS).size());
  }

  @Test
  void recordsLargerThanAPushBatch() throws Exception {
    List<String> rows = assertMatchesBuiltin(LARGE_RECORDS);
    assertTrue(rows.stream().anyMatch(r -> r.contains((6 << 20) + ":")), "the 6 MiB value is missing");
  }

  /** One row per partition: {@code pid|count|sum of values}. */
  static Iterator<String> countAndSum(Integer pid, Iterator<Tuple2<Long, Long>> it) {
    long count = 0;
    long sum = 0;
    while (it.hasNext()) {
      count++;
      sum += it.next()._2();
    }
    return List.of(pid + "|" + count + "|" + sum).iterator();
  }

  static byte[] bytes(long seed, int len) {
    byte[] b = new byte[len];
    new Random(seed).nextBytes(b);
    return b;
  }

  static String sha256(byte[] b) {
    try {
      return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(b));
    } catch (java.security.NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }
}
