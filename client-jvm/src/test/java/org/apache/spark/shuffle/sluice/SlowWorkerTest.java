package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.io.IOException;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Spark jobs through a slowed worker: one of three {@code sluice worker} processes holds every
 * disk write for 50-200 ms ({@code fault_write_delay}), the others are healthy, and every batch
 * has two copies. Each job must give the built-in shuffle's answer, and the slow worker must
 * have taken part (it holds shuffle files).
 */
class SlowWorkerTest extends ShuffleSuite {

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(WorkerLossTest.SUMS, JobSuiteTest.WORD_COUNT);
  }

  @Override
  protected Map<String, String> sparkConf() {
    Map<String, String> conf = super.sparkConf();
    conf.put("spark.sluice.client.replication", "2");
    return conf;
  }

  @Override
  protected SluiceCluster startCluster() throws IOException {
    SluiceCluster cluster = SluiceCluster.separate(getClass().getSimpleName(), 2);
    try {
      cluster.startWorker("slow", "--fault-write-delay", "50ms..200ms");
      return cluster;
    } catch (IOException | RuntimeException e) {
      cluster.close();
      throw e;
    }
  }

  @Test
  @Timeout(300)
  void jobsThroughASlowDiskGiveTheBuiltinAnswer() throws Exception {
    assumeFalse(TestSessions.BUILTIN_ONLY, "needs a Sluice cluster");
    assertMatchesBuiltin(WorkerLossTest.SUMS);
    SluiceCluster.Worker slow =
        cluster.workers().stream()
            .filter(w -> w.id.equals("slow"))
            .findFirst()
            .orElseThrow(() -> new AssertionError("no slow worker in " + cluster));
    assertTrue(slow.holdsFiles(), "the slow worker took no shuffle data: " + cluster);
    assertMatchesBuiltin(JobSuiteTest.WORD_COUNT);
  }
}
