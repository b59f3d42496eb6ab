package org.apache.spark.shuffle.sluice;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.shuffle.BaseShuffleHandle;

/**
 * What every task needs to reach a Spark shuffle's data on Sluice. Created on the driver by
 * {@link SluiceShuffleManager#registerShuffle} and shipped to tasks inside the dependency.
 */
public class SluiceShuffleHandle<K, V, C> extends BaseShuffleHandle<K, V, C> {
  private static final long serialVersionUID = 1L;

  private final String appId;
  private final int numMaps;
  private final int numPartitions;

  public SluiceShuffleHandle(
      int shuffleId,
      ShuffleDependency<K, V, C> dependency,
      String appId,
      int numMaps,
      int numPartitions) {
    super(shuffleId, dependency);
    this.appId = appId;
    this.numMaps = numMaps;
    this.numPartitions = numPartitions;
  }

  /** The Spark application id ({@code spark.app.id}); Sluice's application key. */
  public String appId() {
    return appId;
  }

  /** Map tasks of the shuffle: the partitions of the map-side RDD. */
  public int numMaps() {
    return numMaps;
  }

  /** Reduce partitions of the shuffle. */
  public int numPartitions() {
    return numPartitions;
  }

  @Override
  public String toString() {
    return "SluiceShuffleHandle(shuffle " + shuffleId() + ", app " + appId + ", " + numMaps
        + " maps, " + numPartitions + " partitions)";
  }
}
