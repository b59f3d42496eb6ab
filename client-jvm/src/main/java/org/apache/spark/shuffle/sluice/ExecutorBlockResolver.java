package org.apache.spark.shuffle.sluice;

import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.client.StreamCallbackWithID;
import org.apache.spark.serializer.SerializerManager;
import org.apache.spark.shuffle.MigratableResolver;
import org.apache.spark.shuffle.ShuffleBlockInfo;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.storage.BlockId;
import scala.Option;
import scala.Tuple2;
import scala.collection.immutable.List;
import scala.collection.immutable.List$;
import scala.collection.immutable.Seq;

/**
 * Sluice keeps no shuffle data on executors, so there is nothing to serve: every block read
 * throws. It is also a {@link MigratableResolver} with nothing to migrate, so decommissioning an
 * executor with {@code spark.storage.decommission.shuffleBlocks.enabled} finds no shuffle files
 * instead of failing on a class cast.
 *
 * <p>Spark 3.2 added push-based shuffle's merged blocks to the interface: {@code
 * SluiceShuffleBlockResolver} (compat/resolver-*) is this class with or without them.
 *
 * <p>The {@code Seq} results are declared as {@code scala.collection.immutable.Seq}: that is the
 * trait's own type on Scala 2.13 and a subtype of it on Scala 2.12, so one source compiles for
 * both.
 */
abstract class ExecutorBlockResolver implements ShuffleBlockResolver, MigratableResolver {

  static UnsupportedOperationException noLocalData(Object block) {
    return new UnsupportedOperationException(
        "Sluice keeps shuffle data on Sluice workers, not on executors; no executor can serve "
            + block
            + " (is another shuffle manager's block requested from a Sluice executor?)");
  }

  @Override
  public ManagedBuffer getBlockData(BlockId blockId, Option<String[]> dirs) {
    throw noLocalData(blockId);
  }

  @Override
  public void stop() {}

  @Override
  public Seq<ShuffleBlockInfo> getStoredShuffles() {
    return List$.MODULE$.<ShuffleBlockInfo>empty();
  }

  @Override
  public StreamCallbackWithID putShuffleBlockAsStream(
      BlockId blockId, SerializerManager serializerManager) {
    throw new UnsupportedOperationException(
        "Sluice executors hold no shuffle files and accept none by migration (" + blockId + ")");
  }

  @Override
  public List<Tuple2<BlockId, ManagedBuffer>> getMigrationBlocks(ShuffleBlockInfo info) {
    return List$.MODULE$.<Tuple2<BlockId, ManagedBuffer>>empty();
  }
}
