package org.apache.spark.shuffle.sluice;

import org.apache.spark.SparkConf;

/**
 * The class {@code spark.shuffle.manager} names, for Spark 3.1 to 4.2, where a shuffle manager
 * is a plain {@code ShuffleManager}. Everything it does is in {@link SluiceShuffleManagerBase}.
 */
public final class SluiceShuffleManager extends SluiceShuffleManagerBase {
  public SluiceShuffleManager(SparkConf conf, boolean isDriver) {
    super(conf, isDriver);
  }
}
