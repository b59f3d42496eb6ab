package org.apache.spark.shuffle.sluice;

import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Map;
import org.apache.spark.sql.SparkSession;

/**
 * Builds local SparkSessions for the tests: one with Spark's own sort shuffle, one whose shuffle
 * goes through Sluice. Only one SparkContext can live in a JVM, so a test stops one session
 * ({@link #stop}) before it builds the other.
 */
final class TestSessions {
  /** Set to {@code true} to run the "Sluice" half of every comparison on Spark's own shuffle. */
  static final boolean BUILTIN_ONLY = Boolean.getBoolean("sluice.tests.builtinOnly");

  static final String SLUICE_MANAGER = "org.apache.spark.shuffle.sluice.SluiceShuffleManager";

  private TestSessions() {}

  /** A session with Spark's built-in shuffle. */
  static SparkSession builtin(String master, String app, Map<String, String> conf) {
    return builder(master, app + "-builtin", conf).getOrCreate();
  }

  /** A session whose shuffles go through the Sluice master at {@code endpoint}. */
  static SparkSession sluice(String master, String app, String endpoint, Map<String, String> conf) {
    SparkSession spark =
        builder(master, app + "-sluice", conf)
            .config("spark.shuffle.manager", SLUICE_MANAGER)
            .config(
                "spark.shuffle.sort.io.plugin.class",
                "org.apache.spark.shuffle.sluice.SluiceShuffleDataIO")
            .config("spark.sluice.master.endpoints", endpoint)
            .getOrCreate();
    String manager = spark.sparkContext().env().shuffleManager().getClass().getName();
    if (!manager.equals(SLUICE_MANAGER)) {
      stop(spark);
      throw new IllegalStateException("the session runs shuffle manager " + manager + ", not Sluice's");
    }
    return spark;
  }

  /** Stops the session and forgets it, so the next builder creates a fresh SparkContext. */
  static void stop(SparkSession spark) {
    if (spark == null) {
      return;
    }
    try {
      spark.stop();
    } finally {
      SparkSession.clearActiveSession();
      SparkSession.clearDefaultSession();
    }
  }

  private static SparkSession.Builder builder(String master, String app, Map<String, String> conf) {
    // getOrCreate() would hand back a session left over by an earlier test, with its settings.
    if (SparkSession.getDefaultSession().isDefined()) {
      System.err.println("stopping a SparkSession an earlier test left running");
      stop(SparkSession.getDefaultSession().get());
    }
    Path scratch = Paths.get("target", "spark-tests").toAbsolutePath();
    SparkSession.Builder b =
        SparkSession.builder()
            .master(master)
            .appName(app)
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.warehouse.dir", scratch.resolve("warehouse").toString())
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.default.parallelism", "4");
    for (Map.Entry<String, String> e : conf.entrySet()) {
      b.config(e.getKey(), e.getValue());
    }
    return b;
  }
}
