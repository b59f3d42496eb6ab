package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

/**
 * The jar knows its Spark line and accepts the Spark it is tested with. (A jar on another line's
 * Spark is refused by real spark-submit runs: demo/lines.sh.)
 */
class SparkLineTest {
  @Test
  void theJarIsForTheSparkItRunsOn() {
    SparkLine.check();
    assertEquals(
        System.getProperty("sluice.sparkLine"),
        SparkLine.lineOf(org.apache.spark.package$.MODULE$.SPARK_VERSION()));
    String line = System.getProperty("sluice.sparkLine");
    boolean before35 = line.startsWith("3.") && Integer.parseInt(line.substring(2)) < 5;
    assertEquals(!before35, SparkLine.declaresReliableStorage());
  }

  @Test
  void aLineIsTheMajorAndMinorVersion() {
    assertEquals("3.5", SparkLine.lineOf("3.5.6"));
    assertEquals("4.1", SparkLine.lineOf("4.1.0-preview1"));
    assertEquals("4.10", SparkLine.lineOf("4.10.2"));
    assertEquals("5", SparkLine.lineOf("5"));
  }
}
