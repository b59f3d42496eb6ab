package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import scala.Tuple2;

/**
 * Three Sluice masters (Raft) and two workers as real processes; a Spark job of two chained
 * shuffles. When its first map stage completes, a listener SIGKILLs the leading master: the
 * job's next stage reads the first shuffle's layout from, and registers the second shuffle with,
 * the master elected in its place. The answer must equal Spark's built-in shuffle's.
 */
class MasterFailoverTest extends ShuffleSuite {

  /** Sums by key, then counts the sums by their last digit: two shuffles, three stages. */
  static JavaPairRDD<Long, Long> chained(SparkSession spark) {
    return Data.ids(spark, 4, 40_000)
        .mapToPair(id -> new Tuple2<>(Data.key(id, 3000), id))
        .reduceByKey(Long::sum, 8)
        .mapToPair(kv -> new Tuple2<>(kv._2() % 10, 1L))
        .reduceByKey(Long::sum, 4);
  }

  static final ShuffleJob<List<String>> CHAINED =
      ShuffleJob.of("two chained shuffles", spark -> RddShuffleTest.rowsByPartition(chained(spark)));

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(CHAINED);
  }

  @Override
  protected boolean sharedSluiceSession() {
    return false;
  }

  @Test
  @Timeout(300)
  void theJobRunsThroughALeaderKilledBetweenItsStages() throws Exception {
    assumeFalse(TestSessions.BUILTIN_ONLY, "needs a Sluice cluster");
    try (SluiceCluster cluster = SluiceCluster.ha("MasterFailoverTest", 3, 2)) {
      SparkSession spark =
          TestSessions.sluice(sparkMaster(), "MasterFailoverTest", cluster.master(), sparkConf());
      AtomicReference<String> killed = new AtomicReference<>();
      AtomicReference<Throwable> failed = new AtomicReference<>();
      SparkListener killer =
          onFirstMapStageCompleted(
              () -> {
                try {
                  killed.set(cluster.killLeader());
                } catch (Exception e) {
                  failed.set(e);
                }
              });
      try {
        spark.sparkContext().addSparkListener(killer);
        long started = System.nanoTime();
        List<String> got = RddShuffleTest.rowsByPartition(chained(spark));
        long millis = (System.nanoTime() - started) / 1_000_000;
        if (failed.get() != null) {
          throw new AssertionError("killing the leader failed; " + cluster, failed.get());
        }
        assertNotNull(killed.get(), "the first map stage never completed, no master was killed");
        assertSameAnswer(CHAINED.name + " through a leader kill", expected(CHAINED), got, cluster);
        System.out.println(
            "MasterFailoverTest: killed leader "
                + killed.get()
                + " after the first map stage; new leader "
                + cluster.leader(java.time.Duration.ofSeconds(10))
                + "; job took "
                + millis
                + " ms with the right answer");
      } finally {
        TestSessions.stop(spark);
      }
    }
  }
}
