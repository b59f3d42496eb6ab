package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Jobs with {@code spark.sluice.client.compression=zstd}: each gives the built-in shuffle's
 * answer, and the batches the workers stored are zstd frames (codec byte 2 in a batch head).
 */
class ZstdCodecTest extends ShuffleSuite {
  /** Where a batch head keeps its codec (see protocol/src/batch.rs). */
  private static final int CODEC_OFFSET = 24;

  private static final byte ZSTD = 2;

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(SqlShuffleTest.GROUP_BY_ORDER_BY, JobSuiteTest.WORD_COUNT);
  }

  @Override
  protected Map<String, String> sparkConf() {
    Map<String, String> conf = super.sparkConf();
    conf.put("spark.sluice.client.compression", "zstd");
    return conf;
  }

  @Test
  @Timeout(300)
  void jobsWithZstdBatchesGiveTheBuiltinAnswer() throws Exception {
    assumeFalse(TestSessions.BUILTIN_ONLY, "needs a Sluice cluster");
    assertMatchesBuiltin(SqlShuffleTest.GROUP_BY_ORDER_BY);
    assertMatchesBuiltin(JobSuiteTest.WORD_COUNT);
    assertTrue(anyBatchIsZstd(), "no data file starts with a zstd batch: " + cluster);
  }

  /** Whether the first batch of any data file the workers hold is a zstd frame. */
  private boolean anyBatchIsZstd() throws IOException {
    for (SluiceCluster.Worker worker : cluster.workers()) {
      try (Stream<Path> files = Files.walk(worker.dataDir)) {
        for (Path file : (Iterable<Path>) files.filter(f -> f.toString().endsWith(".data"))::iterator) {
          byte[] head = new byte[CODEC_OFFSET + 1];
          try (InputStream in = Files.newInputStream(file)) {
            if (in.readNBytes(head, 0, head.length) == head.length && head[CODEC_OFFSET] == ZSTD) {
              return true;
            }
          }
        }
      }
    }
    return false;
  }
}
