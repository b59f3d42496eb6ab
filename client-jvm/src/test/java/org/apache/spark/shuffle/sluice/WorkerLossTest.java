package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.util.List;
import java.util.Optional;
import java.util.concurrent.Callable;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import scala.Tuple2;

/**
 * A Sluice worker holding shuffle data is SIGKILLed after the map stage. The job must then
 * either finish with exactly the right answer (Spark runs the map stage again and the data goes
 * to the surviving worker) or fail with an error that says shuffle data was lost. A wrong answer,
 * or a failure that does not name the loss, fails the test.
 *
 * <p>The cluster is one {@code sluice master} and two {@code sluice worker} processes, fresh for
 * each test, as is the Sluice-backed SparkSession. Spark allows 4 attempts per task, as a real
 * cluster does by default ({@code spark.task.maxFailures}).
 */
class WorkerLossTest extends ShuffleSuite {

  @Override
  protected String sparkMaster() {
    return "local[2,4]";
  }

  static JavaPairRDD<Integer, Long> sums(SparkSession spark) {
    return Data.ids(spark, 4, 50_000)
        .mapToPair(id -> new Tuple2<>(Data.key(id, 2000), id))
        .reduceByKey(Long::sum, 8);
  }

  static final ShuffleJob<List<String>> SUMS =
      ShuffleJob.of("sums by key", spark -> RddShuffleTest.rowsByPartition(sums(spark)));

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(SUMS);
  }

  @Override
  protected boolean sharedSluiceSession() {
    return false;
  }

  /**
   * Job 1 runs the map stage and reads the shuffle; the worker holding files is killed; job 2
   * reads the same shuffle again (Spark skips the map stage unless a read reports lost data).
   */
  @Test
  @Timeout(300)
  void workerKilledBetweenTwoJobsOnTheSameShuffle() throws Exception {
    assumeFalse(TestSessions.BUILTIN_ONLY, "needs a Sluice cluster");
    try (SluiceCluster cluster = SluiceCluster.separate("WorkerLossTest-between", 2)) {
      SparkSession spark =
          TestSessions.sluice(sparkMaster(), "WorkerLossTest", cluster.master(), sparkConf());
      try {
        JavaPairRDD<Integer, Long> shuffled = sums(spark);
        assertEquals(2000, shuffled.count());
        SluiceCluster.Worker victim =
            cluster.workers().stream()
                .filter(SluiceCluster.Worker::holdsFiles)
                .findFirst()
                .orElseThrow(() -> new AssertionError("no worker holds shuffle files: " + cluster));
        cluster.killWorker(victim);
        MapStageCounter maps = new MapStageCounter(spark);
        String outcome =
            rightAnswerOrDataLoss(
                cluster, expected(SUMS), () -> RddShuffleTest.rowsByPartition(shuffled));
        System.out.println(
            "WorkerLossTest (between jobs): killed "
                + victim.id
                + "; "
                + outcome
                + "; map stage attempts in job 2: "
                + maps.close());
      } finally {
        TestSessions.stop(spark);
      }
    }
  }

  /**
   * One job; a listener kills a worker as soon as the map stage completes, racing the reduce
   * stage's first reads.
   */
  @Test
  @Timeout(300)
  void workerKilledWhenTheMapStageCompletes() throws Exception {
    assumeFalse(TestSessions.BUILTIN_ONLY, "needs a Sluice cluster");
    try (SluiceCluster cluster = SluiceCluster.separate("WorkerLossTest-during", 2)) {
      SparkSession spark =
          TestSessions.sluice(sparkMaster(), "WorkerLossTest", cluster.master(), sparkConf());
      try {
        System.out.println(
            "WorkerLossTest (during the job): "
                + killAWorkerWhenTheMapStageCompletes(cluster, spark, expected(SUMS)));
      } finally {
        TestSessions.stop(spark);
      }
    }
  }

  /**
   * Runs {@link #SUMS} on {@code spark} while a listener kills a worker of {@code cluster} (one
   * holding files if any does) as soon as the map stage completes. The job must give {@code
   * expected} or fail saying shuffle data was lost; returns what happened, in one line.
   */
  static String killAWorkerWhenTheMapStageCompletes(
      SluiceCluster cluster, SparkSession spark, List<String> expected) throws Exception {
    AtomicReference<String> killed = new AtomicReference<>();
    SparkListener killer =
        onFirstMapStageCompleted(
            () -> {
              // Prefer a worker that already has files; data still in memory counts as well.
              SluiceCluster.Worker victim =
                  cluster.workers().stream()
                      .filter(SluiceCluster.Worker::holdsFiles)
                      .findFirst()
                      .orElse(cluster.workers().get(0));
              try {
                cluster.killWorker(victim);
                killed.set(victim.id + (victim.holdsFiles() ? " (holding files)" : ""));
              } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
              }
            });
    spark.sparkContext().addSparkListener(killer);
    try {
      MapStageCounter maps = new MapStageCounter(spark);
      String outcome =
          rightAnswerOrDataLoss(
              cluster, expected, () -> RddShuffleTest.rowsByPartition(sums(spark)));
      assertTrue(killed.get() != null, "the map stage never completed, nobody was killed");
      return "killed " + killed.get() + "; " + outcome + "; map stage attempts: " + maps.close();
    } finally {
      spark.sparkContext().removeSparkListener(killer);
    }
  }

  /**
   * Runs {@code action}: a result must equal the built-in answer; an exception must say that
   * shuffle data was lost. Returns a one-line description of what happened.
   */
  static String rightAnswerOrDataLoss(
      SluiceCluster cluster, List<String> expected, Callable<List<String>> action) {
    List<String> got;
    try {
      got = action.call();
    } catch (Exception e) {
      Optional<String> why = dataLossMessage(e);
      if (why.isEmpty()) {
        throw new AssertionError(
            "after a worker was killed the job failed without saying shuffle data was lost; "
                + cluster,
            e);
      }
      return "job failed cleanly: " + why.get();
    }
    assertSameAnswer(SUMS.name + " after a worker was killed", expected, got, cluster);
    return "job recovered with the right answer";
  }

  /** The first message in the cause chain that reports lost or unreadable shuffle data. */
  static Optional<String> dataLossMessage(Throwable e) {
    for (Throwable t = e; t != null; t = t.getCause() == t ? null : t.getCause()) {
      String m = t.getClass().getName() + ": " + t.getMessage();
      if (m.contains("FetchFailed")
          || m.contains("SluiceDataLost")
          || m.toLowerCase().contains("shuffle data")
          || m.toLowerCase().contains("data lost")
          || m.toLowerCase().contains("data was lost")) {
        String firstLine = m.split("\n", 2)[0];
        return Optional.of(firstLine.length() > 400 ? firstLine.substring(0, 400) + "..." : firstLine);
      }
    }
    return Optional.empty();
  }

  /** Counts submitted attempts of shuffle map stages while it is registered. */
  static final class MapStageCounter {
    private final SparkSession spark;
    private final AtomicInteger attempts = new AtomicInteger();
    private final SparkListener listener =
        new SparkListener() {
          @Override
          public void onStageSubmitted(SparkListenerStageSubmitted submitted) {
            if (submitted.stageInfo().shuffleDepId().isDefined()) {
              attempts.incrementAndGet();
            }
          }
        };

    MapStageCounter(SparkSession spark) {
      this.spark = spark;
      spark.sparkContext().addSparkListener(listener);
    }

    int close() throws Exception {
      spark.sparkContext().listenerBus().waitUntilEmpty();
      spark.sparkContext().removeSparkListener(listener);
      return attempts.get();
    }
  }
}
