package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.spark.Success$;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import scala.Tuple2;

/**
 * Task attempts that die half-way: their partial output must not reach the answer (map side)
 * and a retried reader must read everything again (reduce side). Spark runs {@code local[4,3]}
 * (three failures allowed per task) and the first attempt of chosen tasks throws after it has
 * produced part of its records, far more than one push batch. Kryo, so this class also covers a
 * relocatable serializer.
 */
class TaskRetryTest extends ShuffleSuite {

  @Override
  protected String sparkMaster() {
    return "local[4,3]";
  }

  @Override
  protected Map<String, String> sparkConf() {
    Map<String, String> conf = super.sparkConf();
    conf.put("spark.serializer", "org.apache.spark.serializer.KryoSerializer");
    return conf;
  }

  /**
   * Passes {@code it} through; on the first attempt of a task whose partition is even, throws
   * once {@code failAfter} elements have gone by.
   */
  static <T> Iterator<T> failHalfWay(Iterator<T> it, long failAfter) {
    TaskContext tc = TaskContext.get();
    boolean fail = tc.attemptNumber() == 0 && tc.partitionId() % 2 == 0;
    return new Iterator<T>() {
      long seen = 0;

      @Override
      public boolean hasNext() {
        if (fail && seen == failAfter) {
          throw new IllegalStateException(
              "injected failure: stage "
                  + tc.stageId()
                  + " partition "
                  + tc.partitionId()
                  + " attempt 0 after "
                  + seen
                  + " records");
        }
        return it.hasNext();
      }

      @Override
      public T next() {
        if (!hasNext()) {
          throw new NoSuchElementException();
        }
        seen++;
        return it.next();
      }
    };
  }

  /** Runs {@code job} and returns how many task attempts failed while it ran. */
  static int countFailedTasks(SparkSession spark, Runnable job) throws Exception {
    AtomicInteger failed = new AtomicInteger();
    SparkListener listener =
        new SparkListener() {
          @Override
          public void onTaskEnd(SparkListenerTaskEnd end) {
            if (end.reason() != Success$.MODULE$) {
              failed.incrementAndGet();
            }
          }
        };
    spark.sparkContext().addSparkListener(listener);
    try {
      job.run();
      spark.sparkContext().listenerBus().waitUntilEmpty();
    } finally {
      spark.sparkContext().removeSparkListener(listener);
    }
    return failed.get();
  }

  /**
   * Maps fail after 40,000 of their 100,000 records (about 4 MB pushed) on their first attempt.
   * The last row is the number of failed task attempts (2 of the 4 maps).
   */
  static final ShuffleJob<List<String>> MAP_FAILS =
      ShuffleJob.of(
          "map attempts fail half-way",
          spark -> {
            AtomicReference<List<String>> rows = new AtomicReference<>();
            int failed =
                countFailedTasks(
                    spark,
                    () ->
                        rows.set(
                            RddShuffleTest.rowsByPartition(
                                Data.ids(spark, 4, 100_000)
                                    .mapPartitions(it -> failHalfWay(it, 40_000))
                                    .mapToPair(id -> new Tuple2<>(Data.key(id, 1000), Data.text(id, 80)))
                                    .reduceByKey((a, b) -> a.compareTo(b) <= 0 ? a : b, 5))));
            rows.get().add("failed attempts: " + failed);
            return rows.get();
          });

  /**
   * Three stages. Stage 2 reads shuffle 1 and writes shuffle 2; its even tasks fail after half
   * their input on the first attempt. The result stage reading shuffle 2 does the same.
   */
  static final ShuffleJob<List<String>> REDUCE_FAILS =
      ShuffleJob.of(
          "reduce attempts fail half-way",
          spark -> {
            AtomicReference<List<String>> rows = new AtomicReference<>();
            int failed =
                countFailedTasks(
                    spark,
                    () ->
                        rows.set(
                            Data.sortedCopy(
                                Data.ids(spark, 4, 50_000)
                                    .mapToPair(id -> new Tuple2<>(Data.key(id, 4000), id))
                                    .reduceByKey(Long::sum, 6)
                                    .mapPartitionsToPair(it -> failHalfWay(it, 300))
                                    .mapToPair(t -> new Tuple2<>(t._1() % 97, t._2()))
                                    .groupByKey(4)
                                    .mapPartitions(it -> failHalfWay(it, 10))
                                    .map(t -> t._1() + "|" + Data.sorted(t._2()))
                                    .collect())));
            rows.get().add("failed attempts: " + failed);
            return rows.get();
          });

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(MAP_FAILS, REDUCE_FAILS);
  }

  @Test
  void mapAttemptsThatFailHalfWayLeaveNoTrace() throws Exception {
    List<String> rows = assertMatchesBuiltin(MAP_FAILS);
    assertEquals("failed attempts: 2", rows.get(rows.size() - 1));
    assertEquals(1001, rows.size());
  }

  @Test
  void reduceAttemptsThatFailHalfWayReadEverythingAgain() throws Exception {
    List<String> rows = assertMatchesBuiltin(REDUCE_FAILS);
    // 3 of the 6 middle tasks and 2 of the 4 result tasks fail once.
    assertEquals("failed attempts: 5", rows.get(rows.size() - 1));
    assertTrue(rows.size() == 98);
  }
}
