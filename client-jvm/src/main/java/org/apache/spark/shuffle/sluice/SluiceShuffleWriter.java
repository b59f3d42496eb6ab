package org.apache.spark.shuffle.sluice;

import java.io.IOException;
import java.io.OutputStream;
import java.util.Arrays;
import org.apache.spark.Partitioner;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.TaskContext;
import org.apache.spark.memory.MemoryConsumer;
import org.apache.spark.memory.MemoryMode;
import org.apache.spark.memory.TaskMemoryManager;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.serializer.SerializationStream;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.util.TaskCompletionListener;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Option;
import scala.Product2;
import scala.collection.Iterator;
import scala.reflect.ClassTag;
import scala.reflect.ClassTag$;

/**
 * Writes one map task's output to Sluice.
 *
 * <p>Records are serialized into a buffer per reduce partition, each with its own serialization
 * stream (created on the partition's first record). When a buffer reaches
 * {@code spark.sluice.push.bufferSize}, its stream is closed and the buffer goes to the native
 * writer in one {@link SluiceNative#write} call, as a chunk:
 *
 * <pre>
 *   +----------------------+-----------------------------------------------+
 *   | length (4 bytes, BE) | one complete serialization stream (length bytes) |
 *   +----------------------+-----------------------------------------------+
 * </pre>
 *
 * <p>Sluice never splits a write call, so a reader gets whole chunks back and deserializes each
 * on its own: serializer streams (Java serialization in particular) cannot be concatenated. The
 * buffer is reused for the partition's next chunk. There is no JNI call per record.
 *
 * <p>The buffers are Spark task memory: their capacity (plus an estimate for each open stream's
 * own buffers) is acquired from the task's memory manager as they grow. When memory runs out, or
 * Spark asks this writer to spill, every buffer is pushed, the native writer is flushed (all
 * pushes acked), and the memory is given back.
 *
 * <p>{@link #stop} with success pushes what is left, ends the map on the master
 * ({@link SluiceNative#finish}) and returns a {@code MapStatus} whose sizes are the bytes Sluice
 * stored per partition (AQE plans with them) and whose location names the stage attempt (see
 * {@link StageAttempts}).
 *
 * <p>Like Spark's own writers this class is used by one task thread; a spill requested by another
 * consumer of the same task arrives between records.
 */
final class SluiceShuffleWriter<K, V, C> extends ShuffleWriter<K, V> {
  private static final Logger LOG = LoggerFactory.getLogger(SluiceShuffleWriter.class);

  /** The big-endian chunk length in front of each serialization stream. */
  static final int LENGTH_PREFIX = 4;
  /** Start capacity of a partition buffer; it doubles up to about the push buffer size. */
  private static final int INITIAL_BUFFER = 4 << 10;
  /**
   * Memory counted for each open serialization stream's own buffers: 8k for Spark SQL's row
   * serializer (a buffered stream), 4k for Kryo's output buffer, 2-3k for Java serialization's
   * block buffer and handle tables. (Kryo instances themselves live in Kryo's pool either way.)
   */
  private static final long STREAM_OVERHEAD = 8 << 10;
  /** Task memory is asked for in steps of at least this much. */
  private static final long MEMORY_STEP = 1 << 20;

  @SuppressWarnings("unchecked")
  private static final ClassTag<Object> ANY = (ClassTag<Object>) (Object) ClassTag$.MODULE$.Any();

  private final SluiceShuffleHandle<K, V, C> handle;
  private final ShuffleDependency<K, V, C> dep;
  private final TaskContext context;
  private final ShuffleWriteMetricsReporter metrics;
  private final long client;
  private final int bufferSize;
  private final int stageAttempt;
  private final int sluiceShuffleId;
  private final Partitioner partitioner;
  private final SerializerInstance serializer;
  private final PushMemory memory;

  /** Per partition; null until the partition's first record and after a spill. */
  private final PartitionBuffer[] buffers;
  /** Bytes of task memory the buffers and open streams need (compare {@code memory.getUsed()}). */
  private long accounted;
  private long spills;

  /** The native writer; 0 before {@link #write} and after it was closed. */
  private long writer;
  private long[] partitionLengths;
  private boolean stopped;

  SluiceShuffleWriter(
      SluiceShuffleHandle<K, V, C> handle,
      TaskContext context,
      ShuffleWriteMetricsReporter metrics,
      long client,
      int bufferSize) {
    this.handle = handle;
    this.dep = handle.dependency();
    this.context = context;
    this.metrics = metrics;
    this.client = client;
    this.bufferSize = bufferSize;
    this.stageAttempt = context.stageAttemptNumber();
    this.sluiceShuffleId = StageAttempts.sluiceShuffleId(handle.shuffleId(), stageAttempt);
    this.partitioner = dep.partitioner();
    this.serializer = dep.serializer().newInstance();
    this.buffers = new PartitionBuffer[handle.numPartitions()];
    this.memory = new PushMemory(context.taskMemoryManager());
    // Whatever way the task ends, the native writer is closed and task memory is returned.
    context.addTaskCompletionListener((TaskCompletionListener) ctx -> release());
  }

  @Override
  @SuppressWarnings("unchecked")
  public void write(Iterator<Product2<K, V>> records) throws IOException {
    openWriter();
    Iterator<? extends Product2<K, ?>> input;
    if (dep.mapSideCombine()) {
      if (dep.aggregator().isEmpty()) {
        throw new IllegalStateException("map-side combine without an aggregator");
      }
      input = dep.aggregator().get().combineValuesByKey(records, context);
    } else {
      input = records;
    }
    while (input.hasNext()) {
      Product2<K, ?> record = input.next();
      K key = record._1();
      int partition = partitioner.getPartition(key);
      PartitionBuffer buffer = buffers[partition];
      if (buffer == null) {
        buffer = new PartitionBuffer(INITIAL_BUFFER);
        buffers[partition] = buffer;
        accounted += buffer.capacity();
      }
      if (buffer.stream == null) {
        buffer.stream = serializer.serializeStream(buffer);
        accounted += STREAM_OVERHEAD;
      }
      buffer.stream.writeKey(key, ANY);
      buffer.stream.writeValue(record._2(), ANY);
      metrics.incRecordsWritten(1);

      if (buffer.size() >= bufferSize) {
        pushChunk(partition, buffer);
      }
      long grown = buffer.capacity() - buffer.accountedCapacity;
      if (grown != 0) {
        accounted += grown;
        buffer.accountedCapacity = buffer.capacity();
      }
      if (accounted > memory.getUsed()) {
        reserve();
      }
    }
  }

  @Override
  public Option<MapStatus> stop(boolean success) {
    if (stopped) {
      return Option.empty();
    }
    stopped = true;
    try {
      if (!success) {
        return Option.empty();
      }
      openWriter(); // a map whose write() never ran still has to end, or the shuffle never commits
      for (int partition = 0; partition < buffers.length; partition++) {
        PartitionBuffer buffer = buffers[partition];
        if (buffer != null && buffer.stream != null) {
          pushChunk(partition, buffer);
        }
      }
      long start = System.nanoTime();
      long[] sizes = SluiceNative.finish(writer);
      metrics.incWriteTime(System.nanoTime() - start);
      if (sizes.length != handle.numPartitions()) {
        throw new IllegalStateException(
            "the native writer reported " + sizes.length + " partition sizes for "
                + handle + ", expected " + handle.numPartitions());
      }
      long total = 0;
      for (long size : sizes) {
        total += size;
      }
      metrics.incBytesWritten(total);
      partitionLengths = sizes;
      MapStatus status =
          SparkApi.mapStatus(
              StageAttempts.location(handle.shuffleId(), stageAttempt),
              sizes,
              context.taskAttemptId());
      return Option.apply(status);
    } finally {
      release();
    }
  }

  /** Part of ShuffleWriter from Spark 3.2 on. */
  public long[] getPartitionLengths() {
    return partitionLengths == null ? new long[0] : partitionLengths;
  }

  private void openWriter() {
    if (writer != 0) {
      return;
    }
    writer =
        SluiceNative.newWriter(
            client,
            handle.appId(),
            sluiceShuffleId,
            handle.numMaps(),
            handle.numPartitions(),
            context.partitionId(),
            context.attemptNumber());
  }

  /** Closes the partition's stream and hands its bytes to the native writer as one chunk. */
  private void pushChunk(int partition, PartitionBuffer buffer) {
    buffer.stream.close();
    buffer.stream = null;
    accounted -= STREAM_OVERHEAD;
    if (buffer.hasRecords()) {
      byte[] frame = buffer.sealFrame();
      long start = System.nanoTime();
      SluiceNative.write(writer, partition, frame, 0, buffer.size());
      metrics.incWriteTime(System.nanoTime() - start);
    }
    buffer.restart();
  }

  /** Gets task memory for what the buffers hold now, or pushes everything if there is none. */
  private void reserve() {
    long spillsBefore = spills;
    long want = Math.max(accounted - memory.getUsed(), Math.max(MEMORY_STEP, accounted));
    memory.acquireMemory(want); // may spill this writer to make room
    if (spills == spillsBefore && accounted > memory.getUsed()) {
      pushAll();
    }
  }

  /**
   * Pushes every buffer, waits until Sluice acked every push, drops the buffers and returns all
   * task memory. Returns the bytes returned.
   */
  private long pushAll() {
    if (writer == 0) {
      return 0;
    }
    for (int partition = 0; partition < buffers.length; partition++) {
      PartitionBuffer buffer = buffers[partition];
      if (buffer != null) {
        if (buffer.stream != null) {
          pushChunk(partition, buffer);
        }
        buffers[partition] = null;
      }
    }
    accounted = 0;
    spills++;
    long start = System.nanoTime();
    SluiceNative.flush(writer);
    metrics.incWriteTime(System.nanoTime() - start);
    long freed = memory.getUsed();
    if (freed > 0) {
      memory.freeMemory(freed);
    }
    return freed;
  }

  /** Closes the native writer and returns task memory. Runs more than once; later runs no-ops. */
  private void release() {
    if (writer != 0) {
      long closing = writer;
      writer = 0;
      try {
        SluiceNative.closeWriter(closing);
      } catch (RuntimeException e) {
        LOG.warn("closing the sluice writer of {} map {} failed", handle, context.partitionId(), e);
      }
    }
    for (int partition = 0; partition < buffers.length; partition++) {
      PartitionBuffer buffer = buffers[partition];
      if (buffer != null && buffer.stream != null) {
        try {
          buffer.stream.close(); // returns pooled serializer state (Kryo) to its pool
        } catch (RuntimeException e) {
          LOG.debug("closing a serialization stream failed", e);
        }
      }
      buffers[partition] = null;
    }
    accounted = 0;
    long used = memory.getUsed();
    if (used > 0) {
      memory.freeMemory(used);
    }
  }

  /** The writer's buffers as a Spark memory consumer. */
  private final class PushMemory extends MemoryConsumer {
    PushMemory(TaskMemoryManager taskMemoryManager) {
      super(taskMemoryManager, taskMemoryManager.pageSizeBytes(), MemoryMode.ON_HEAP);
    }

    @Override
    public long spill(long size, MemoryConsumer trigger) {
      if (writer == 0 || stopped) {
        return 0;
      }
      LOG.debug(
          "spilling sluice writer of {} map {}: pushing {} buffered bytes",
          handle, context.partitionId(), accounted);
      return pushAll();
    }

    @Override
    public String toString() {
      return "SluiceShuffleWriter(" + handle + ", map " + context.partitionId() + ")";
    }
  }

  /**
   * A growable byte buffer that starts with room for the chunk's length prefix. Not
   * synchronized, unlike {@code ByteArrayOutputStream}; {@code close()} does nothing, because a
   * serialization stream closes the stream under it and the buffer lives on for the next chunk.
   */
  static final class PartitionBuffer extends OutputStream {
    private byte[] buf;
    private int count = LENGTH_PREFIX;
    SerializationStream stream;
    long accountedCapacity;

    PartitionBuffer(int capacity) {
      buf = new byte[Math.max(capacity, LENGTH_PREFIX + 16)];
      accountedCapacity = buf.length;
    }

    int capacity() {
      return buf.length;
    }

    /** Bytes held, prefix included. */
    int size() {
      return count;
    }

    boolean hasRecords() {
      return count > LENGTH_PREFIX;
    }

    /** Writes the length prefix and returns the backing array; valid up to {@link #size}. */
    byte[] sealFrame() {
      int length = count - LENGTH_PREFIX;
      buf[0] = (byte) (length >>> 24);
      buf[1] = (byte) (length >>> 16);
      buf[2] = (byte) (length >>> 8);
      buf[3] = (byte) length;
      return buf;
    }

    void restart() {
      count = LENGTH_PREFIX;
    }

    private void ensure(int extra) {
      int needed = count + extra;
      if (needed < 0) {
        throw new IllegalStateException("a sluice push buffer cannot exceed 2 GiB");
      }
      if (needed > buf.length) {
        int grown = Math.max(needed, buf.length << 1);
        if (grown < 0) {
          grown = Integer.MAX_VALUE - 8;
        }
        buf = Arrays.copyOf(buf, grown);
      }
    }

    @Override
    public void write(int b) {
      ensure(1);
      buf[count++] = (byte) b;
    }

    @Override
    public void write(byte[] b, int off, int len) {
      ensure(len);
      System.arraycopy(b, off, buf, count, len);
      count += len;
    }

    @Override
    public void close() {}
  }
}
