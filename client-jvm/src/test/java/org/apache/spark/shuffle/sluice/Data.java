package org.apache.spark.shuffle.sluice;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.stream.LongStream;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;

/** Deterministic test data, generated inside the tasks (nothing large travels in closures). */
final class Data {
  private Data() {}

  static JavaSparkContext jsc(SparkSession spark) {
    return JavaSparkContext.fromSparkContext(spark.sparkContext());
  }

  /**
   * The ids {@code 0 .. slices * perSlice - 1}, slice {@code s} holding {@code [s * perSlice, (s
   * + 1) * perSlice)}: the same partitioning on every run.
   */
  static JavaRDD<Long> ids(SparkSession spark, int slices, long perSlice) {
    List<Integer> seeds = new ArrayList<>();
    for (int i = 0; i < slices; i++) {
      seeds.add(i);
    }
    return jsc(spark)
        .parallelize(seeds, slices)
        .flatMap(s -> LongStream.range(s * perSlice, (s + 1) * perSlice).boxed().iterator());
  }

  /** A bijective 64-bit mix (splitmix64 finalizer): distinct inputs give distinct outputs. */
  static long mix(long x) {
    x += 0x9E3779B97F4A7C15L;
    x = (x ^ (x >>> 30)) * 0xBF58476D1CE4E5B9L;
    x = (x ^ (x >>> 27)) * 0x94D049BB133111EBL;
    return x ^ (x >>> 31);
  }

  /** A pseudo-random key in {@code [0, n)} for {@code id}. */
  static int key(long id, int n) {
    return (int) Math.floorMod(mix(id), (long) n);
  }

  /** A deterministic string of {@code len} letters derived from {@code seed}. */
  static String text(long seed, int len) {
    StringBuilder sb = new StringBuilder(len);
    long x = seed;
    for (int i = 0; i < len; i++) {
      x = mix(x);
      sb.append((char) ('a' + Math.floorMod(x, 26L)));
    }
    return sb.toString();
  }

  /** The iterator's elements, sorted. */
  static <T extends Comparable<? super T>> List<T> sorted(Iterable<T> items) {
    List<T> list = new ArrayList<>();
    for (T t : items) {
      list.add(t);
    }
    Collections.sort(list);
    return list;
  }

  /** {@code list} sorted, for answers whose order Spark does not define. */
  static <T extends Comparable<? super T>> List<T> sortedCopy(List<T> list) {
    List<T> copy = new ArrayList<>(list);
    Collections.sort(copy);
    return copy;
  }
}
