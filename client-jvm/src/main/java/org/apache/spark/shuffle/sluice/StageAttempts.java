package org.apache.spark.shuffle.sluice;

import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.BlockManagerId$;
import scala.Option;

/**
 * How Spark's stage attempts map onto Sluice shuffles.
 *
 * <p>Sluice lets the first attempt of each map to end win, and seals a shuffle once every map has
 * ended. A map stage that Spark runs again (after a fetch failure, its output is declared lost)
 * must therefore not write into the shuffle its earlier attempt wrote: the old outputs would win,
 * or the shuffle would already be sealed. Every stage attempt writes its own Sluice shuffle:
 *
 * <pre>
 *   sluice shuffle id = spark shuffle id * 64 + (stage attempt % 64)
 * </pre>
 *
 * <p>The attempt travels to the readers inside the {@code MapStatus} location, which is not a
 * real block manager (nothing is stored on executors):
 *
 * <pre>
 *   executor id = "sluice-&lt;spark shuffle id&gt;"
 *   host        = "sluice-attempt-&lt;stage attempt&gt;"
 *   port        = 7337
 * </pre>
 *
 * <p>The executor id is what makes a reader's fetch failure re-run the whole map stage. For a
 * {@code FetchFailedException} with map index -1, Spark 3.5 and 4.0 unregister no particular map
 * output; they treat the failure's block manager as lost, which removes every map output (of
 * every shuffle) whose location has that executor id, and ignore late results of tasks started
 * before the failure that report it. One executor id per Spark shuffle therefore drops exactly
 * that shuffle's outputs, from all its attempts, and nothing of other shuffles; one id shared by
 * all shuffles would make any fetch failure re-run every Sluice map stage of the application, and
 * one id per attempt would leave the outputs of other attempts registered.
 *
 * <p>Attempt 64 of a stage would reuse attempt 0's shuffle; Spark aborts a job long before that
 * ({@code spark.stage.maxConsecutiveAttempts}, default 4).
 */
final class StageAttempts {
  /** Sluice shuffles reserved per Spark shuffle. */
  static final int SLOTS = 64;

  static final String HOST_PREFIX = "sluice-attempt-";
  static final int PORT = 7337;

  private StageAttempts() {}

  /** The Sluice shuffle that attempt {@code stageAttempt} of the map stage writes. */
  static int sluiceShuffleId(int sparkShuffleId, int stageAttempt) {
    if (sparkShuffleId < 0 || stageAttempt < 0) {
      throw new IllegalArgumentException(
          "negative shuffle id or stage attempt: " + sparkShuffleId + ", " + stageAttempt);
    }
    // Overflows only past 33 million shuffles in one application; fail loudly if it ever does.
    return Math.addExact(Math.multiplyExact(sparkShuffleId, SLOTS), stageAttempt % SLOTS);
  }

  /** The {@code MapStatus} location of every map written by {@code stageAttempt}. */
  static BlockManagerId location(int sparkShuffleId, int stageAttempt) {
    return BlockManagerId$.MODULE$.apply(
        "sluice-" + sparkShuffleId,
        HOST_PREFIX + stageAttempt,
        PORT,
        Option.<String>empty());
  }

  /** The stage attempt a location names, or -1 if it is not a Sluice location. */
  static int attemptOf(BlockManagerId location) {
    if (location == null) {
      return -1;
    }
    String host = location.host();
    if (host == null || !host.startsWith(HOST_PREFIX)) {
      return -1;
    }
    try {
      return Integer.parseInt(host.substring(HOST_PREFIX.length()));
    } catch (NumberFormatException e) {
      return -1;
    }
  }
}
