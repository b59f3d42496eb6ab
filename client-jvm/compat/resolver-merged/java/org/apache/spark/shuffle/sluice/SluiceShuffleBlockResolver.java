package org.apache.spark.shuffle.sluice;

import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.shuffle.MergedBlockMeta;
import org.apache.spark.storage.ShuffleMergedBlockId;
import scala.Option;
import scala.collection.immutable.Seq;

/**
 * The block resolver from Spark 3.2 on, whose interface also serves push-based shuffle's merged
 * blocks; Sluice executors have none of those either.
 */
final class SluiceShuffleBlockResolver extends ExecutorBlockResolver {
  @Override
  public Seq<ManagedBuffer> getMergedBlockData(
      ShuffleMergedBlockId blockId, Option<String[]> dirs) {
    throw noLocalData(blockId);
  }

  @Override
  public MergedBlockMeta getMergedBlockMeta(ShuffleMergedBlockId blockId, Option<String[]> dirs) {
    throw noLocalData(blockId);
  }
}
