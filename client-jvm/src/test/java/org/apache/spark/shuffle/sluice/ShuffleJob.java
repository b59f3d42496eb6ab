package org.apache.spark.shuffle.sluice;

import org.apache.spark.sql.SparkSession;

/**
 * A named Spark job whose answer must not depend on the shuffle implementation. It must be
 * deterministic: run twice on the same data it returns an equal value (sort what Spark leaves
 * unordered). Job bodies are static lambdas, so the Spark closures inside them capture no test
 * instance.
 */
final class ShuffleJob<T> {
  @FunctionalInterface
  interface Body<T> {
    T run(SparkSession spark) throws Exception;
  }

  final String name;
  final Body<T> body;

  private ShuffleJob(String name, Body<T> body) {
    this.name = name;
    this.body = body;
  }

  static <T> ShuffleJob<T> of(String name, Body<T> body) {
    return new ShuffleJob<>(name, body);
  }

  T run(SparkSession spark) throws Exception {
    return body.run(spark);
  }

  @Override
  public String toString() {
    return name;
  }
}
