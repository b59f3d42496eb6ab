package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.execution.SparkPlan;
import org.apache.spark.sql.execution.adaptive.AdaptiveSparkPlanExec;
import org.apache.spark.sql.execution.adaptive.QueryStageExec;
import org.apache.spark.sql.execution.joins.SortMergeJoinExec;
import org.junit.jupiter.api.Test;

/**
 * Spark SQL shuffles (UnsafeRow data, Spark's adaptive execution) through Sluice give exactly
 * the answers of Spark's own shuffle. The AQE jobs also check that adaptive execution did what
 * the test is about (coalescing partitions by their real sizes; splitting a skewed partition into
 * map ranges), which only happens when Sluice reports real per-partition sizes and reads map
 * ranges.
 */
class SqlShuffleTest extends ShuffleSuite {

  static List<String> rows(Dataset<Row> df) {
    List<String> out = new ArrayList<>();
    for (Row r : df.collectAsList()) {
      out.add(r.toString());
    }
    return out;
  }

  /** A session of its own (temp views, settings) over the class's SparkContext. */
  static SparkSession session(SparkSession spark, String... settings) {
    SparkSession s = spark.newSession();
    for (int i = 0; i < settings.length; i += 2) {
      s.conf().set(settings[i], settings[i + 1]);
    }
    s.range(0, 300_000, 1, 4)
        .selectExpr("id % 997 AS k", "id AS v", "concat('n', id % 13) AS name")
        .createOrReplaceTempView("t");
    return s;
  }

  static final ShuffleJob<List<String>> GROUP_BY_ORDER_BY =
      ShuffleJob.of(
          "SQL GROUP BY ... ORDER BY",
          spark ->
              rows(
                  session(spark)
                      .sql(
                          "SELECT k, count(*) AS c, sum(v) AS s, min(name) AS lo, max(name) AS hi"
                              + " FROM t GROUP BY k ORDER BY k")));

  /** ORDER BY an aggregate: a range-partitioned shuffle after the aggregation's hash shuffle. */
  static final ShuffleJob<List<String>> ORDER_BY_AGGREGATE =
      ShuffleJob.of(
          "SQL ORDER BY an aggregate",
          spark ->
              rows(
                  session(spark, "spark.sql.adaptive.enabled", "false")
                      .sql(
                          "SELECT name, k % 50 AS g, count(*) AS c, sum(v) AS s FROM t"
                              + " GROUP BY name, k % 50 ORDER BY s DESC, name, g")));

  /**
   * A sort-merge join over 64 shuffle partitions that AQE coalesces by size. The last row says
   * whether the join's input was read coalesced into 2..63 partitions: 1 would mean every
   * partition looked empty (sizes not reported), 64 that nothing was coalesced.
   */
  static final ShuffleJob<List<String>> AQE_COALESCED_JOIN =
      ShuffleJob.of(
          "AQE coalesced join",
          spark -> {
            SparkSession s =
                session(
                    spark,
                    "spark.sql.adaptive.enabled", "true",
                    "spark.sql.adaptive.coalescePartitions.enabled", "true",
                    "spark.sql.adaptive.coalescePartitions.parallelismFirst", "false",
                    "spark.sql.adaptive.advisoryPartitionSizeInBytes", "16k",
                    "spark.sql.adaptive.coalescePartitions.minPartitionSize", "1k",
                    "spark.sql.adaptive.skewJoin.enabled", "false",
                    "spark.sql.autoBroadcastJoinThreshold", "-1",
                    "spark.sql.shuffle.partitions", "64");
            Dataset<Row> orders =
                s.range(0, 200_000, 1, 4)
                    .selectExpr("id AS oid", "id % 5000 AS cid", "(id * 7) % 1000 AS amount");
            Dataset<Row> customers =
                s.range(0, 5000, 1, 2).selectExpr("id AS cid", "concat('r', id % 37) AS region");
            Dataset<Row> result =
                orders
                    .join(customers, "cid")
                    .groupBy("region")
                    .agg(
                        org.apache.spark.sql.functions.count("*").as("n"),
                        org.apache.spark.sql.functions.sum("amount").as("total"))
                    .orderBy("region");
            List<String> out = rows(result);
            int[] minMax = {Integer.MAX_VALUE, 0};
            forEachNode(
                result.queryExecution().executedPlan(),
                join -> {
                  if (join instanceof SortMergeJoinExec) {
                    forEachNode(
                        join,
                        node -> {
                          if (isShuffleRead(node)
                              && flag(node, "isCoalescedRead", "hasCoalescedPartition")) {
                            int n = partitionCount(node);
                            minMax[0] = Math.min(minMax[0], n);
                            minMax[1] = Math.max(minMax[1], n);
                          }
                        });
                  }
                });
            System.out.println("AQE coalesced join: join inputs read as " + minMax[0] + ".." + minMax[1] + " partitions");
            out.add("join input coalesced into 2..63 partitions: " + (minMax[0] >= 2 && minMax[1] <= 63));
            return out;
          });

  /**
   * A sort-merge join where half the rows of one side share one key. AQE splits that partition
   * into map ranges ({@code getReader} with {@code [startMap, endMap)}) and joins each against
   * the other side. The last row says whether the final plan has a skew join.
   */
  static final ShuffleJob<List<String>> AQE_SKEW_JOIN =
      ShuffleJob.of(
          "AQE skew join",
          spark -> {
            SparkSession s =
                session(
                    spark,
                    "spark.sql.adaptive.enabled", "true",
                    "spark.sql.adaptive.skewJoin.enabled", "true",
                    "spark.sql.adaptive.skewJoin.skewedPartitionThresholdInBytes", "1k",
                    "spark.sql.adaptive.skewJoin.skewedPartitionFactor", "1",
                    "spark.sql.adaptive.advisoryPartitionSizeInBytes", "1k",
                    "spark.sql.adaptive.coalescePartitions.enabled", "true",
                    "spark.sql.autoBroadcastJoinThreshold", "-1",
                    "spark.sql.shuffle.partitions", "16");
            Dataset<Row> facts =
                s.range(0, 200_000, 1, 8)
                    .selectExpr("CASE WHEN id % 2 = 0 THEN 0 ELSE id % 1000 END AS k", "id AS v");
            Dataset<Row> dims = s.range(0, 1000, 1, 2).selectExpr("id AS k", "id * 3 AS w");
            facts.createOrReplaceTempView("facts");
            dims.createOrReplaceTempView("dims");
            Dataset<Row> result =
                s.sql(
                    "SELECT f.v % 97 AS b, count(*) AS n, sum(d.w) AS sw, sum(f.v) AS sv"
                        + " FROM facts f JOIN dims d ON f.k = d.k GROUP BY f.v % 97 ORDER BY b");
            List<String> out = rows(result);
            boolean[] seen = {false, false};
            forEachNode(
                result.queryExecution().executedPlan(),
                node -> {
                  if (node instanceof SortMergeJoinExec && ((SortMergeJoinExec) node).isSkewJoin()) {
                    seen[0] = true;
                  }
                  if (isShuffleRead(node) && flag(node, "hasSkewedPartition")) {
                    seen[1] = true;
                  }
                });
            out.add("skew join with map-range reads: " + (seen[0] && seen[1]));
            return out;
          });

  /**
   * Whether a plan node is AQE's shuffle read: {@code AQEShuffleReadExec} from Spark 3.2 on,
   * {@code CustomShuffleReaderExec} in 3.1. The tests compile against every Spark line, so they
   * reach its methods by name.
   */
  static boolean isShuffleRead(SparkPlan node) {
    String name = node.getClass().getSimpleName();
    return name.equals("AQEShuffleReadExec") || name.equals("CustomShuffleReaderExec");
  }

  /** The first of {@code methods} the node has, called: a boolean property of a shuffle read. */
  static boolean flag(SparkPlan node, String... methods) {
    for (String method : methods) {
      try {
        return (Boolean) node.getClass().getMethod(method).invoke(node);
      } catch (NoSuchMethodException e) {
        // Named differently on this Spark line: try the next name.
      } catch (ReflectiveOperationException e) {
        throw new IllegalStateException(method + " of " + node.getClass().getName(), e);
      }
    }
    throw new IllegalStateException(node.getClass().getName() + " has none of " + List.of(methods));
  }

  /** How many partitions a shuffle read reads. */
  static int partitionCount(SparkPlan node) {
    try {
      Object specs = node.getClass().getMethod("partitionSpecs").invoke(node);
      return ((scala.collection.Seq<?>) specs).size();
    } catch (ReflectiveOperationException e) {
      throw new IllegalStateException("partitionSpecs of " + node.getClass().getName(), e);
    }
  }

  /** Visits every node of a physical plan, inside adaptive plans and query stages too. */
  static void forEachNode(SparkPlan plan, Consumer<SparkPlan> visit) {
    visit.accept(plan);
    if (plan instanceof AdaptiveSparkPlanExec) {
      forEachNode(((AdaptiveSparkPlanExec) plan).executedPlan(), visit);
    } else if (plan instanceof QueryStageExec) {
      forEachNode(((QueryStageExec) plan).plan(), visit);
    }
    for (int i = 0; i < plan.children().size(); i++) {
      forEachNode(plan.children().apply(i), visit);
    }
  }

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(GROUP_BY_ORDER_BY, ORDER_BY_AGGREGATE, AQE_COALESCED_JOIN, AQE_SKEW_JOIN);
  }

  @Test
  void groupByOrderBy() throws Exception {
    assertEquals(997, assertMatchesBuiltin(GROUP_BY_ORDER_BY).size());
  }

  @Test
  void orderByAggregate() throws Exception {
    assertEquals(13 * 50, assertMatchesBuiltin(ORDER_BY_AGGREGATE).size());
  }

  @Test
  void aqeCoalescesPartitionsBySize() throws Exception {
    List<String> rows = assertMatchesBuiltin(AQE_COALESCED_JOIN);
    assertEquals("join input coalesced into 2..63 partitions: true", rows.get(rows.size() - 1));
  }

  @Test
  void aqeSkewJoinReadsMapRanges() throws Exception {
    List<String> rows = assertMatchesBuiltin(AQE_SKEW_JOIN);
    assertEquals("skew join with map-range reads: true", rows.get(rows.size() - 1));
    assertTrue(rows.size() > 90);
  }
}
