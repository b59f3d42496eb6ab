package org.apache.spark.shuffle.sluice;

import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.scheduler.MapStatus$;
import org.apache.spark.serializer.Serializer;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.util.collection.ExternalSorter;
import scala.Option;
import scala.math.Ordering;

/**
 * The Spark calls whose signatures changed in Spark 4.1, as Spark 4.1 on takes them: both gained
 * a checksum of the map output. Sluice verifies its data itself (every batch carries a CRC), so
 * both take Spark's own defaults, which compute no checksum.
 */
final class SparkApi {
  private SparkApi() {}

  /** A map task's status: where its output is, the size of each partition, the task attempt. */
  static MapStatus mapStatus(BlockManagerId location, long[] sizes, long mapTaskId) {
    return MapStatus$.MODULE$.apply(
        location, sizes, mapTaskId, MapStatus$.MODULE$.apply$default$4());
  }

  /** A sorter by key, without aggregation or partitioning (the reduce side's sort). */
  static <K, C> ExternalSorter<K, C, C> keySorter(
      TaskContext context, Option<Ordering<K>> ordering, Serializer serializer) {
    return new ExternalSorter<>(
        context,
        Option.empty(),
        Option.empty(),
        ordering,
        serializer,
        ExternalSorter.$lessinit$greater$default$6());
  }
}
