package org.apache.spark.shuffle.sluice;

import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.BlockingShuffleManager;

/**
 * The class {@code spark.shuffle.manager} names, for Spark 4.3 on, which only accepts a {@code
 * BlockingShuffleManager} (a manager whose map output is complete when its task ends, and which
 * owns a block resolver). Everything it does is in {@link SluiceShuffleManagerBase}.
 */
public final class SluiceShuffleManager extends SluiceShuffleManagerBase
    implements BlockingShuffleManager {
  public SluiceShuffleManager(SparkConf conf, boolean isDriver) {
    super(conf, isDriver);
  }
}
