package org.apache.spark.shuffle.sluice;

import java.io.ByteArrayInputStream;
import java.util.NoSuchElementException;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import org.apache.spark.InterruptibleIterator;
import org.apache.spark.MapOutputTracker;
import org.apache.spark.MapOutputTrackerMaster;
import org.apache.spark.MapOutputTrackerWorker;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.ShuffleStatus;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.util.TaskCompletionListener;
import org.apache.spark.util.collection.ExternalSorter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Option;
import scala.Product2;
import scala.Tuple2;
import scala.collection.AbstractIterator;
import scala.collection.Iterator;
import scala.collection.Iterator$;

/**
 * Reads reduce partitions {@code [startPartition, endPartition)} of map outputs {@code [startMap,
 * endMap)} from Sluice, then aggregates and sorts like Spark's own shuffle reader.
 *
 * <p><b>Which Sluice shuffle.</b> Each stage attempt of the map stage writes its own Sluice
 * shuffle ({@link StageAttempts}); the map statuses say which attempt each map's accepted output
 * came from. If every map of the shuffle comes from one attempt, that attempt's shuffle is read.
 * If they come from several attempts (Spark re-ran only the missing maps of a map stage, or a
 * late task of an old attempt registered its output), no Sluice shuffle holds all of them, and a
 * Sluice shuffle whose maps did not all end is never committed, so reading any one of them would
 * only wait for the commit until it times out. The reader then reports a fetch failure with map
 * index -1 at once: Spark drops every output of the shuffle and runs the whole map stage again in
 * a new attempt, after which all maps agree.
 *
 * <p><b>Chunks.</b> {@link SluiceNative#next} returns blocks, each a run of chunks {@code [4-byte
 * big-endian length][serialization stream]} as the writer pushed them; each chunk is deserialized
 * on its own.
 *
 * <p><b>Failures.</b> Lost or corrupt data ({@link SluiceDataLostException}) and any other
 * native failure while reading (an unreachable worker or master, a commit that never came) become
 * a {@link FetchFailedException} with map index -1, so Spark re-runs the map stage.
 */
final class SluiceShuffleReader<K, C> implements ShuffleReader<K, C> {
  private static final Logger LOG = LoggerFactory.getLogger(SluiceShuffleReader.class);

  private final SluiceShuffleHandle<K, ?, C> handle;
  private final ShuffleDependency<K, ?, C> dep;
  private final int startMap;
  private final int endMap;
  private final int startPartition;
  private final int endPartition;
  private final TaskContext context;
  private final ShuffleReadMetricsReporter metrics;
  private final long client;

  SluiceShuffleReader(
      SluiceShuffleHandle<K, ?, C> handle,
      int startMapIndex,
      int endMapIndex,
      int startPartition,
      int endPartition,
      TaskContext context,
      ShuffleReadMetricsReporter metrics,
      long client) {
    this.handle = handle;
    this.dep = handle.dependency();
    this.startMap = Math.max(0, Math.min(startMapIndex, handle.numMaps()));
    this.endMap = Math.max(this.startMap, Math.min(endMapIndex, handle.numMaps()));
    this.startPartition = startPartition;
    this.endPartition = endPartition;
    this.context = context;
    this.metrics = metrics;
    this.client = client;
  }

  @Override
  @SuppressWarnings({"unchecked", "rawtypes"})
  public Iterator<Product2<K, C>> read() {
    int attempt = chooseAttempt();
    Iterator<Tuple2<Object, Object>> records;
    if (attempt < 0) {
      // No map wrote anything into these partitions: there is nothing to fetch.
      context.taskMetrics().mergeShuffleReadMetrics();
      records =
          (Iterator<Tuple2<Object, Object>>) (Iterator<?>) Iterator$.MODULE$.empty();
    } else {
      if (LOG.isDebugEnabled()) {
        LOG.debug(
            "reading shuffle {} partitions [{}, {}) maps [{}, {}) of {} from stage attempt {}",
            handle.shuffleId(), startPartition, endPartition, startMap, endMap, handle.numMaps(),
            attempt);
      }
      RecordIterator fetched = new RecordIterator(attempt);
      context.addTaskCompletionListener((TaskCompletionListener) ctx -> fetched.complete());
      records = fetched;
    }
    Iterator interruptible = new InterruptibleIterator<>(context, records);

    Iterator<Product2<K, C>> aggregated;
    if (dep.aggregator().isDefined()) {
      if (dep.mapSideCombine()) {
        aggregated = dep.aggregator().get().combineCombinersByKey(interruptible, context);
      } else {
        aggregated = dep.aggregator().get().combineValuesByKey(interruptible, context);
      }
    } else {
      aggregated = interruptible;
    }

    Iterator<Product2<K, C>> result;
    if (dep.keyOrdering().isDefined()) {
      ExternalSorter<K, C, C> sorter =
          SparkApi.keySorter(context, dep.keyOrdering(), dep.serializer());
      result = sortAll(sorter, aggregated, context);
    } else {
      result = aggregated;
    }
    if (result instanceof InterruptibleIterator) {
      return result;
    }
    return new InterruptibleIterator<>(context, result);
  }

  /**
   * The stage attempt whose Sluice shuffle holds the requested data, or -1 if the map statuses
   * show no data at all in the requested range. Throws a fetch failure when the shuffle's maps
   * come from more than one attempt (see the class comment).
   */
  private int chooseAttempt() {
    int shuffleId = handle.shuffleId();
    MapOutputTracker tracker = SparkEnv.get().mapOutputTracker();
    // Throws MetadataFetchFailedException (a fetch failure) if a map output is missing.
    Iterator<? extends Tuple2<BlockManagerId, ?>> located =
        tracker.getMapSizesByExecutorId(shuffleId, startMap, endMap, startPartition, endPartition);
    TreeSet<Integer> attempts = new TreeSet<>();
    while (located.hasNext()) {
      attempts.add(attemptOf(located.next()._1()));
    }
    if (attempts.isEmpty()) {
      return -1;
    }
    // The located blocks leave out maps that wrote nothing into this range, but such a map must
    // still have ended in the Sluice shuffle we read, or the shuffle never commits: look at the
    // attempt of every map of the shuffle.
    MapStatus[] all = allStatuses(tracker, shuffleId);
    if (all != null) {
      for (MapStatus status : all) {
        if (status != null) {
          attempts.add(attemptOf(status.location()));
        }
      }
    }
    if (attempts.size() > 1) {
      int newest = attempts.last();
      String message =
          "the map outputs of shuffle "
              + shuffleId
              + " come from stage attempts "
              + attempts
              + "; Sluice keeps each stage attempt in its own shuffle and serves a shuffle only"
              + " once all its maps ended, so the whole map stage has to run again";
      LOG.warn("{} (reduce partitions [{}, {}))", message, startPartition, endPartition);
      throw sneaky(
          new FetchFailedException(
              StageAttempts.location(shuffleId, newest),
              shuffleId,
              -1L,
              -1,
              startPartition,
              message,
              null));
    }
    return attempts.first();
  }

  private int attemptOf(BlockManagerId location) {
    int attempt = StageAttempts.attemptOf(location);
    if (attempt < 0) {
      throw new IllegalStateException(
          "shuffle "
              + handle.shuffleId()
              + " has a map output at "
              + location
              + ", which Sluice did not write; every executor and the driver must use "
              + SluiceShuffleManager.class.getName());
    }
    return attempt;
  }

  /**
   * Every map status of the shuffle as this process's tracker holds it: the cache an executor
   * filled for {@code getMapSizesByExecutorId}, or the driver's registry in local mode. Null when
   * neither is available (then only the located blocks are checked).
   */
  private static MapStatus[] allStatuses(MapOutputTracker tracker, int shuffleId) {
    if (tracker instanceof MapOutputTrackerWorker) {
      Option<MapStatus[]> cached =
          ((MapOutputTrackerWorker) tracker).mapStatuses().get(shuffleId);
      return cached.isDefined() ? cached.get() : null;
    }
    if (tracker instanceof MapOutputTrackerMaster) {
      Option<ShuffleStatus> status =
          ((MapOutputTrackerMaster) tracker).shuffleStatuses().get(shuffleId);
      return status.isDefined() ? status.get().mapStatuses() : null;
    }
    return null;
  }

  /**
   * Inserts everything into the sorter, adds its spill and peak-memory figures to the task
   * metrics, and stops it (freeing its memory and spill files) when its output is exhausted or
   * the task ends, whichever comes first. Spark's own reader does the same; its helper for it
   * only exists from Spark 3.2 on, so this one serves every line.
   */
  static <K, C> Iterator<Product2<K, C>> sortAll(
      ExternalSorter<K, C, C> sorter, Iterator<Product2<K, C>> records, TaskContext context) {
    sorter.insertAll(records);
    context.taskMetrics().incMemoryBytesSpilled(sorter.memoryBytesSpilled());
    context.taskMetrics().incDiskBytesSpilled(sorter.diskBytesSpilled());
    context.taskMetrics().incPeakExecutionMemory(sorter.peakMemoryUsedBytes());
    context.addTaskCompletionListener((TaskCompletionListener) ctx -> sorter.stop());
    Iterator<Product2<K, C>> sorted = sorter.iterator();
    return new AbstractIterator<Product2<K, C>>() {
      private boolean stopped;

      @Override
      public boolean hasNext() {
        boolean more = sorted.hasNext();
        if (!more && !stopped) {
          stopped = true;
          sorter.stop();
        }
        return more;
      }

      @Override
      public Product2<K, C> next() {
        return sorted.next();
      }
    };
  }

  /** Java has no checked-exception escape hatch for Scala methods; this is the usual one. */
  @SuppressWarnings("unchecked")
  private static <E extends Throwable> RuntimeException sneaky(Throwable t) throws E {
    throw (E) t;
  }

  /** The records of the chosen attempt's Sluice shuffle, block by block, chunk by chunk. */
  private final class RecordIterator extends AbstractIterator<Tuple2<Object, Object>> {
    private final int attempt;
    private final SerializerInstance serializer;
    private long reader;
    private boolean exhausted;
    private byte[] block;
    private int position;
    private Iterator<Tuple2<Object, Object>> chunk;
    private long waitNanos;
    private long waitMillisReported;
    /** What {@link SluiceNative#bytesRead} said last, already added to the task's metrics. */
    private long bytesReported;

    RecordIterator(int attempt) {
      this.attempt = attempt;
      this.serializer = dep.serializer().newInstance();
    }

    @Override
    public boolean hasNext() {
      while (true) {
        if (chunk != null) {
          if (chunk.hasNext()) {
            return true;
          }
          chunk = null;
        }
        if (exhausted) {
          return false;
        }
        if (block == null || position >= block.length) {
          block = nextBlock();
          position = 0;
          if (block == null) {
            exhausted = true;
            complete();
            return false;
          }
          continue;
        }
        chunk = nextChunk();
      }
    }

    @Override
    public Tuple2<Object, Object> next() {
      if (!hasNext()) {
        throw new NoSuchElementException("end of shuffle " + handle.shuffleId() + " data");
      }
      metrics.incRecordsRead(1);
      return chunk.next();
    }

    private Iterator<Tuple2<Object, Object>> nextChunk() {
      int remaining = block.length - position;
      int length = -1;
      if (remaining >= SluiceShuffleWriter.LENGTH_PREFIX) {
        length =
            ((block[position] & 0xff) << 24)
                | ((block[position + 1] & 0xff) << 16)
                | ((block[position + 2] & 0xff) << 8)
                | (block[position + 3] & 0xff);
      }
      if (length < 0 || length > remaining - SluiceShuffleWriter.LENGTH_PREFIX) {
        throw fetchFailed(
            new SluiceDataLostException(
                "malformed chunk in a block of "
                    + block.length
                    + " bytes at offset "
                    + position
                    + " (length "
                    + length
                    + ")"));
      }
      int start = position + SluiceShuffleWriter.LENGTH_PREFIX;
      position = start + length;
      return serializer
          .deserializeStream(new ByteArrayInputStream(block, start, length))
          .asKeyValueIterator();
    }

    /** The next block from the native reader, or null at the end. */
    private byte[] nextBlock() {
      long started = System.nanoTime();
      try {
        if (reader == 0) {
          // Waits for the shuffle's commit.
          reader =
              SluiceNative.newReader(
                  client,
                  handle.appId(),
                  StageAttempts.sluiceShuffleId(handle.shuffleId(), attempt),
                  startPartition,
                  endPartition,
                  startMap,
                  endMap);
          bytesReported = 0;
        }
        byte[] next = SluiceNative.next(reader);
        // The size as stored, like the writers' (and Spark's own shuffle's): the decoded
        // block is larger when the batches were compressed.
        long read = SluiceNative.bytesRead(reader);
        metrics.incRemoteBytesRead(read - bytesReported);
        bytesReported = read;
        if (next == null) {
          closeReader();
          return null;
        }
        metrics.incRemoteBlocksFetched(1);
        return next;
      } catch (SluiceException e) {
        closeReader();
        throw fetchFailed(e);
      } finally {
        reportWait(System.nanoTime() - started);
      }
    }

    private void reportWait(long nanos) {
      waitNanos += nanos;
      long millis = TimeUnit.NANOSECONDS.toMillis(waitNanos);
      if (millis > waitMillisReported) {
        metrics.incFetchWaitTime(millis - waitMillisReported);
        waitMillisReported = millis;
      }
    }

    private RuntimeException fetchFailed(SluiceException cause) {
      int shuffleId = handle.shuffleId();
      String message =
          "reading shuffle "
              + shuffleId
              + " (stage attempt "
              + attempt
              + ", Sluice shuffle "
              + StageAttempts.sluiceShuffleId(shuffleId, attempt)
              + ") partitions ["
              + startPartition
              + ", "
              + endPartition
              + ") maps ["
              + startMap
              + ", "
              + endMap
              + ") failed: "
              + cause.getMessage();
      return sneaky(
          new FetchFailedException(
              StageAttempts.location(shuffleId, attempt),
              shuffleId,
              -1L,
              -1,
              startPartition,
              message,
              cause));
    }

    private void closeReader() {
      if (reader != 0) {
        long closing = reader;
        reader = 0;
        try {
          SluiceNative.closeReader(closing);
        } catch (RuntimeException e) {
          LOG.warn("closing the sluice reader of shuffle {} failed", handle.shuffleId(), e);
        }
      }
    }

    /** At the end of the data or of the task: free the native reader, publish the metrics. */
    void complete() {
      closeReader();
      // Idempotent: sets the task's shuffle-read figures to the sum of every reader's so far.
      context.taskMetrics().mergeShuffleReadMetrics();
    }
  }
}
