package org.apache.spark.shuffle.sluice;

/**
 * The JNI surface of the native Sluice client (crate {@code sluice-jni} in
 * {@code client-jvm/native}). Handles are opaque {@code long}s owned by the caller: every
 * {@code new*} handle must be released exactly once with its {@code close*} method (task
 * completion listeners do this). Failures throw {@link SluiceException}; lost or unreachable
 * shuffle data throws {@link SluiceDataLostException}.
 *
 * <p>One tokio runtime serves the whole JVM. Calls block the calling thread until done.
 */
public final class SluiceNative {
  static {
    NativeLoader.load();
  }

  private SluiceNative() {}

  /**
   * Creates a client of the masters in {@code master}: {@code host:port}, or several separated by
   * commas when the masters are replicated (calls go to the leader, found by trying them in order
   * and following their redirects). {@code settings} are {@code key=value} strings:
   * {@code batch_size}, {@code push_size}, {@code max_inflight_pushes}, {@code max_buffered},
   * {@code compression} ({@code lz4|zstd|none}), {@code connect_timeout_ms},
   * {@code request_timeout_ms}, {@code request_timeout_min_ms}, {@code push_retry_timeout_ms},
   * {@code prefetch_chunks},
   * {@code layout_timeout_ms}, {@code master_retry_timeout_ms},
   * {@code master_request_timeout_ms}. An unknown key or a malformed master list throws.
   */
  public static native long newClient(String master, String[] settings);

  public static native void closeClient(long client);

  /**
   * The totals of the client metrics of this JVM (every client counts into them), in this fixed
   * order: bytes pushed and acknowledged, push retries, revives, fetch retries, data-loss errors.
   * {@link SluiceMetricsSource#NAMES} names them.
   */
  public static native long[] clientMetrics();

  /**
   * Registers a shuffle (idempotent; the placement is cached per client, and forgotten when the
   * master answers that it does not know the shuffle, so the next use registers it again).
   */
  public static native void registerShuffle(
      long client, String appId, int shuffleId, int numMaps, int numPartitions);

  /** Deletes a shuffle on the master and its workers; forgets the cached placement. */
  public static native void unregisterShuffle(long client, String appId, int shuffleId);

  /** Keeps the application's data alive on the cluster. */
  public static native void appHeartbeat(long client, String appId);

  /** A writer for one attempt of one map; registers the shuffle first if needed. */
  public static native long newWriter(
      long client,
      String appId,
      int shuffleId,
      int numMaps,
      int numPartitions,
      int mapId,
      int attempt);

  /**
   * Appends {@code data[offset, offset + length)} to {@code partition}. The bytes of one call are
   * never split across batches, so a reader gets them back whole and contiguous.
   */
  public static native void write(long writer, int partition, byte[] data, int offset, int length);

  /** Pushes everything buffered and waits for every ack (a spill). */
  public static native void flush(long writer);

  /**
   * Pushes everything, waits for every ack, reports the map's end to the master. Returns the
   * stored bytes per partition. The writer must still be closed.
   */
  public static native long[] finish(long writer);

  public static native void closeWriter(long writer);

  /**
   * A reader of partitions {@code [startPartition, endPartition)} and maps {@code [startMap,
   * endMap)}; waits for the shuffle's commit.
   */
  public static native long newReader(
      long client,
      String appId,
      int shuffleId,
      int startPartition,
      int endPartition,
      int startMap,
      int endMap);

  /**
   * The next block of bytes: the concatenation of whole {@link #write} calls of one map, in the
   * order they were written. {@code null} at the end.
   */
  public static native byte[] next(long reader);

  /**
   * The stored bytes (as written: compressed, batch heads included) of every batch the reader
   * has taken so far. At the end of the reader this is the sum of the writers' partition sizes
   * for its range, so it is what the task reports as its shuffle read size.
   */
  public static native long bytesRead(long reader);

  public static native void closeReader(long reader);
}
