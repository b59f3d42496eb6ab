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
 * The Spark calls whose signatures changed in Spark 4.1 (which added checksums of map output),
 * as Spark 3.1 to 4.0 take them.
 */
final class SparkApi {
  private SparkApi() {}

  /** A map task's status: where its output is, the size of each partition, the task attempt. */
  static MapStatus mapStatus(BlockManagerId location, long[] sizes, long mapTaskId) {
    return MapStatus$.MODULE$.apply(location, sizes, mapTaskId);
  }

  /** A sorter by key, without aggregation or partitioning (the reduce side's sort). */
  static <K, C> ExternalSorter<K, C, C> keySorter(
      TaskContext context, Option<Ordering<K>> ordering, Serializer serializer) {
    return new ExternalSorter<>(context, Option.empty(), Option.empty(), ordering, serializer);
  }
}
