package org.apache.spark.shuffle.sluice;

import java.util.Collections;
import java.util.Map;
import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.api.ShuffleDataIO;
import org.apache.spark.shuffle.api.ShuffleDriverComponents;
import org.apache.spark.shuffle.api.ShuffleExecutorComponents;
import org.apache.spark.shuffle.api.ShuffleMapOutputWriter;

/**
 * Tells Spark that shuffle output outlives executors. Set it with
 * {@code spark.shuffle.sort.io.plugin.class=org.apache.spark.shuffle.sluice.SluiceShuffleDataIO}
 * beside {@code spark.shuffle.manager=org.apache.spark.shuffle.sluice.SluiceShuffleManager}.
 *
 * <p>With it, Spark's driver components report reliable storage, which
 *
 * <ul>
 *   <li>lets dynamic allocation run without the external shuffle service;
 *   <li>keeps Spark from re-running finished map tasks of a running stage when the executor that
 *       ran them is lost, and from dropping their outputs (their data is on Sluice workers).
 * </ul>
 *
 * <p>Only the driver side is used. {@link SluiceShuffleManager} writes through the native client
 * and never asks for executor components; the ones returned here refuse to write so a
 * misconfiguration (this plugin under Spark's sort shuffle manager) fails clearly.
 */
public class SluiceShuffleDataIO implements ShuffleDataIO {

  public SluiceShuffleDataIO(SparkConf conf) {}

  @Override
  public ShuffleDriverComponents driver() {
    return new DriverComponents();
  }

  @Override
  public ShuffleExecutorComponents executor() {
    return new ExecutorComponents();
  }

  private static final class DriverComponents implements ShuffleDriverComponents {
    @Override
    public Map<String, String> initializeApplication() {
      return Collections.emptyMap();
    }

    @Override
    public void cleanupApplication() {
      // Shuffles are deleted by SluiceShuffleManager.unregisterShuffle and stop(); whatever is
      // left expires on the Sluice cluster once the application stops heartbeating.
    }

    /**
     * Part of ShuffleDriverComponents from Spark 3.5 on; older lines never ask (see
     * client-jvm/README.md for what that means for dynamic allocation).
     */
    public boolean supportsReliableStorage() {
      return true;
    }
  }

  private static final class ExecutorComponents implements ShuffleExecutorComponents {
    @Override
    public void initializeExecutor(String appId, String execId, Map<String, String> extraConfigs) {}

    @Override
    public ShuffleMapOutputWriter createMapOutputWriter(
        int shuffleId, long mapTaskId, int numPartitions) {
      throw new UnsupportedOperationException(
          "SluiceShuffleDataIO only works with spark.shuffle.manager="
              + SluiceShuffleManager.class.getName()
              + ", which writes map output to Sluice itself; a local-file shuffle writer asked"
              + " it for a map output writer (shuffle "
              + shuffleId
              + ")");
    }
  }
}
