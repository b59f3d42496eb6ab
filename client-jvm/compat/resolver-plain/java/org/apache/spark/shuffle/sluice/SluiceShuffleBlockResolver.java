package org.apache.spark.shuffle.sluice;

/** Spark 3.1's block resolver: no merged (push-based shuffle) blocks yet. */
final class SluiceShuffleBlockResolver extends ExecutorBlockResolver {}
