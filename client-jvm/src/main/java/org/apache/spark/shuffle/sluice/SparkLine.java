package org.apache.spark.shuffle.sluice;

import java.io.IOException;
import java.io.InputStream;
import java.util.Properties;

/**
 * The Spark line (major.minor) this jar was built for, and the check that the running Spark is
 * of that line. Each line has its own jar because Spark's shuffle plug-in API moves between
 * lines; a jar on the wrong Spark would otherwise fail later, deep in a task, with a {@code
 * NoSuchMethodError}. The shuffle manager runs the check first thing, on the driver and on every
 * executor.
 */
final class SparkLine {
  private static final String RESOURCE = "/sluice-spark-line.properties";

  private SparkLine() {}

  /** Throws {@link IllegalStateException} naming the right jar when the lines differ. */
  static void check() {
    Properties built = built();
    String line = built.getProperty("line");
    String running = runningVersion();
    if (line == null || running == null) {
      throw new IllegalStateException(
          "cannot tell which Spark line this Sluice jar is for ("
              + RESOURCE
              + " is missing from it) or which Spark is running ("
              + running
              + ")");
    }
    if (!line.equals(lineOf(running))) {
      throw new IllegalStateException(
          "this Sluice jar ("
              + built.getProperty("jar")
              + ") is for Spark "
              + line
              + " (Scala "
              + built.getProperty("scala")
              + "), but this is Spark "
              + running
              + ": use sluice-spark-"
              + lineOf(running)
              + "_<scala>-*.jar, built for that line (client-jvm/README.md lists the supported"
              + " lines)");
    }
  }

  /** The running Spark's version ("3.5.6"), or "unknown". */
  static String running() {
    String version = runningVersion();
    return version == null ? "unknown" : version;
  }

  /**
   * Whether this Spark asks shuffle plug-ins if their storage outlives executors ({@code
   * ShuffleDriverComponents.supportsReliableStorage}, Spark 3.5 on).
   */
  static boolean declaresReliableStorage() {
    String[] parts = lineOf(running()).split("\\.");
    try {
      int major = Integer.parseInt(parts[0]);
      int minor = parts.length > 1 ? Integer.parseInt(parts[1]) : 0;
      return major > 3 || (major == 3 && minor >= 5);
    } catch (NumberFormatException e) {
      return true;
    }
  }

  /** "3.5" of "3.5.6", "4.1" of "4.1.0-preview1"; the version itself when it has no minor. */
  static String lineOf(String version) {
    int first = version.indexOf('.');
    if (first < 0) {
      return version;
    }
    int end = first + 1;
    while (end < version.length() && Character.isDigit(version.charAt(end))) {
      end++;
    }
    return version.substring(0, end);
  }

  private static Properties built() {
    Properties properties = new Properties();
    try (InputStream in = SparkLine.class.getResourceAsStream(RESOURCE)) {
      if (in != null) {
        properties.load(in);
      }
    } catch (IOException e) {
      // Reported as a missing line by check().
    }
    return properties;
  }

  /** The running Spark's version, from the constant every line keeps in its package object. */
  private static String runningVersion() {
    try {
      return org.apache.spark.package$.MODULE$.SPARK_VERSION();
    } catch (LinkageError e) {
      return null;
    }
  }
}
