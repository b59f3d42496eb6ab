package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.io.IOException;
import java.util.List;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.Timeout;
import scala.Tuple2;

/**
 * The job suite every supported Spark line passes: word count, groupByKey with a skewed key, a
 * sort, a SQL aggregation, an AQE skew join that reads map ranges, map and reduce tasks that fail
 * half-way, and a worker killed between the map and the reduce stage. Each gives the answer of
 * Spark's built-in shuffle.
 *
 * <p>The cluster is a master and two worker processes, so the last test can kill a worker; it
 * runs last. Spark allows 4 attempts per task.
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class JobSuiteTest extends ShuffleSuite {

  /** Words of 200,000 generated lines, counted. */
  static final ShuffleJob<List<String>> WORD_COUNT =
      ShuffleJob.of(
          "word count",
          spark ->
              RddShuffleTest.rowsByPartition(
                  Data.ids(spark, 4, 50_000)
                      .map(id -> "a" + Data.key(id, 3000) + " b" + Data.key(id * 7, 300) + " the")
                      .flatMap(line -> List.of(line.split(" ")).iterator())
                      .mapToPair(word -> new Tuple2<>(word, 1L))
                      .reduceByKey(Long::sum, 7)));

  /** groupByKey where half of all records share key 0, so one reducer reads half the data. */
  static final ShuffleJob<List<String>> SKEWED_GROUP_BY_KEY =
      ShuffleJob.of(
          "groupByKey with a skewed key",
          spark ->
              RddShuffleTest.rowsByPartition(
                  Data.ids(spark, 4, 50_000)
                      .mapToPair(id -> new Tuple2<>(id % 2 == 0 ? 0 : Data.key(id, 500), id))
                      .groupByKey(6)
                      .mapValues(values -> {
                        List<Long> sorted = Data.sorted(values);
                        return sorted.size() + ":" + sorted.get(0) + ".." + sorted.get(sorted.size() - 1);
                      })));

  @Override
  protected String sparkMaster() {
    return "local[2,4]";
  }

  @Override
  protected SluiceCluster startCluster() throws IOException {
    return SluiceCluster.separate("JobSuiteTest", 2);
  }

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(
        WORD_COUNT,
        SKEWED_GROUP_BY_KEY,
        RddShuffleTest.SORT_BY_KEY,
        SqlShuffleTest.GROUP_BY_ORDER_BY,
        SqlShuffleTest.AQE_SKEW_JOIN,
        TaskRetryTest.MAP_FAILS,
        TaskRetryTest.REDUCE_FAILS,
        WorkerLossTest.SUMS);
  }

  @Test
  @Order(1)
  void wordCount() throws Exception {
    assertTrue(assertMatchesBuiltin(WORD_COUNT).size() > 3000);
  }

  @Test
  @Order(2)
  void groupByKeyWithASkewedKey() throws Exception {
    assertTrue(assertMatchesBuiltin(SKEWED_GROUP_BY_KEY).size() > 400);
  }

  @Test
  @Order(3)
  void sort() throws Exception {
    assertMatchesBuiltin(RddShuffleTest.SORT_BY_KEY);
  }

  @Test
  @Order(4)
  void sqlAggregation() throws Exception {
    assertEquals(997, assertMatchesBuiltin(SqlShuffleTest.GROUP_BY_ORDER_BY).size());
  }

  @Test
  @Order(5)
  void aqeSkewJoinReadsMapRanges() throws Exception {
    List<String> rows = assertMatchesBuiltin(SqlShuffleTest.AQE_SKEW_JOIN);
    assertEquals("skew join with map-range reads: true", rows.get(rows.size() - 1));
  }

  @Test
  @Order(6)
  void tasksThatFailHalfWay() throws Exception {
    List<String> maps = assertMatchesBuiltin(TaskRetryTest.MAP_FAILS);
    assertEquals("failed attempts: 2", maps.get(maps.size() - 1));
    List<String> reduces = assertMatchesBuiltin(TaskRetryTest.REDUCE_FAILS);
    assertEquals("failed attempts: 5", reduces.get(reduces.size() - 1));
  }

  @Test
  @Order(7)
  @Timeout(300)
  void workerKilledBetweenTheMapAndTheReduceStage() throws Exception {
    assumeFalse(TestSessions.BUILTIN_ONLY, "needs a Sluice cluster");
    System.out.println(
        "JobSuiteTest: "
            + WorkerLossTest.killAWorkerWhenTheMapStageCompletes(
                cluster, spark, expected(WorkerLossTest.SUMS)));
  }
}
