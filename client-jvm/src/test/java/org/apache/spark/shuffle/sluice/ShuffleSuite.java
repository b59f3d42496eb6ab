package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageCompleted;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.TestInstance;

/**
 * Base of the test classes that run each job twice, once on Spark's own shuffle and once through
 * Sluice, and require the same answer.
 *
 * <p>Only one SparkContext can run in a JVM, so a class does it in two phases: {@code
 * @BeforeAll} runs every job of {@link #jobs()} on a built-in-shuffle session and keeps the
 * answers, stops that session, starts a Sluice cluster and one Sluice-backed session for the
 * whole class. Each test then runs its job through Sluice and compares ({@link
 * #assertMatchesBuiltin}). A job that fails on the built-in shuffle fails its own test only.
 *
 * <p>With {@code -Dsluice.tests.builtinOnly=true} the second session uses Spark's shuffle as
 * well and no cluster is started: a check that the jobs themselves are deterministic.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
abstract class ShuffleSuite {
  /** The Sluice cluster of this class (null in builtin-only mode or before setup). */
  protected SluiceCluster cluster;
  /** The session the tests run on: Sluice-backed, or built-in in builtin-only mode. */
  protected SparkSession spark;

  private final Map<ShuffleJob<?>, Object> expected = new IdentityHashMap<>();
  private final Map<ShuffleJob<?>, Throwable> expectedFailure = new IdentityHashMap<>();

  /** Every job the class compares; run on the built-in shuffle once, before any test. */
  protected abstract List<ShuffleJob<?>> jobs();

  /** The Spark master URL of both sessions. */
  protected String sparkMaster() {
    return "local[2]";
  }

  /** Spark settings for both sessions, on top of {@link TestSessions}' defaults. */
  protected Map<String, String> sparkConf() {
    return new HashMap<>();
  }

  /** The cluster the Sluice session talks to. */
  protected SluiceCluster startCluster() throws IOException {
    return SluiceCluster.local(getClass().getSimpleName(), 2);
  }

  /** Whether {@code @BeforeAll} starts the shared cluster and Sluice session. */
  protected boolean sharedSluiceSession() {
    return true;
  }

  @BeforeAll
  final void runBaselineThenStartSluice() throws IOException {
    SparkSession builtin = TestSessions.builtin(sparkMaster(), name(), sparkConf());
    try {
      for (ShuffleJob<?> job : jobs()) {
        try {
          expected.put(job, job.run(builtin));
        } catch (Throwable t) {
          expectedFailure.put(job, t);
        }
      }
    } finally {
      TestSessions.stop(builtin);
    }
    if (!sharedSluiceSession()) {
      return;
    }
    if (TestSessions.BUILTIN_ONLY) {
      spark = TestSessions.builtin(sparkMaster(), name(), sparkConf());
    } else {
      cluster = startCluster();
      spark = TestSessions.sluice(sparkMaster(), name(), cluster.master(), sparkConf());
    }
  }

  @AfterAll
  final void stopSluice() {
    try {
      TestSessions.stop(spark);
    } finally {
      spark = null;
      if (cluster != null) {
        cluster.close();
        cluster = null;
      }
    }
  }

  /** The answer {@code job} gave on Spark's own shuffle. */
  @SuppressWarnings("unchecked")
  protected final <T> T expected(ShuffleJob<T> job) {
    Throwable failure = expectedFailure.get(job);
    if (failure != null) {
      throw new AssertionError(
          "job " + job + " failed on Spark's built-in shuffle (a bug in the test)", failure);
    }
    if (!expected.containsKey(job)) {
      throw new IllegalStateException("job " + job + " is not listed in " + name() + ".jobs()");
    }
    return (T) expected.get(job);
  }

  /** Runs {@code job} on the class's Sluice session and requires the built-in answer. */
  protected final <T> T assertMatchesBuiltin(ShuffleJob<T> job) throws Exception {
    T want = expected(job);
    T got = job.run(spark);
    assertSameAnswer(job.name, want, got, cluster);
    return got;
  }

  /**
   * Requires {@code got} to equal {@code want}. On a mismatch of two lists the message gives
   * their sizes, the first differing position and a few rows missing from or extra in {@code
   * got}, instead of printing both lists whole.
   */
  static void assertSameAnswer(String what, Object want, Object got, SluiceCluster cluster) {
    if (Objects.equals(want, got)) {
      return;
    }
    StringBuilder msg = new StringBuilder("job ").append(what).append(": the Sluice answer differs from the built-in one");
    if (want instanceof List && got instanceof List) {
      List<?> w = (List<?>) want;
      List<?> g = (List<?>) got;
      msg.append("\n  rows: built-in ").append(w.size()).append(", sluice ").append(g.size());
      int i = 0;
      while (i < Math.min(w.size(), g.size()) && Objects.equals(w.get(i), g.get(i))) {
        i++;
      }
      msg.append("\n  first difference at row ").append(i);
      if (i < w.size()) {
        msg.append("\n    built-in: ").append(clip(w.get(i)));
      }
      if (i < g.size()) {
        msg.append("\n    sluice:   ").append(clip(g.get(i)));
      }
      Map<Object, Integer> balance = new HashMap<>();
      for (Object o : w) {
        balance.merge(o, 1, Integer::sum);
      }
      for (Object o : g) {
        balance.merge(o, -1, Integer::sum);
      }
      List<String> missing = new ArrayList<>();
      List<String> extra = new ArrayList<>();
      long missingCount = 0;
      long extraCount = 0;
      for (Map.Entry<Object, Integer> e : balance.entrySet()) {
        if (e.getValue() > 0) {
          missingCount += e.getValue();
          if (missing.size() < 5) {
            missing.add(clip(e.getKey()) + (e.getValue() > 1 ? " x" + e.getValue() : ""));
          }
        } else if (e.getValue() < 0) {
          extraCount -= e.getValue();
          if (extra.size() < 5) {
            extra.add(clip(e.getKey()) + (e.getValue() < -1 ? " x" + -e.getValue() : ""));
          }
        }
      }
      msg.append("\n  rows missing in sluice: ").append(missingCount).append(' ').append(missing);
      msg.append("\n  rows only in sluice: ").append(extraCount).append(' ').append(extra);
      if (missingCount == 0 && extraCount == 0) {
        msg.append("\n  (same rows, different order)");
      }
    } else {
      msg.append("\n  built-in: ").append(clip(want)).append("\n  sluice:   ").append(clip(got));
    }
    if (cluster != null) {
      msg.append("\n  ").append(cluster);
    }
    fail(msg.toString());
  }

  /**
   * A listener that runs {@code action} once, when the first shuffle map stage completes (the
   * moment the tests kill a worker or a master: map output written, reduce stage starting).
   */
  static SparkListener onFirstMapStageCompleted(Runnable action) {
    AtomicBoolean once = new AtomicBoolean();
    return new SparkListener() {
      @Override
      public void onStageCompleted(SparkListenerStageCompleted done) {
        if (done.stageInfo().shuffleDepId().isDefined() && once.compareAndSet(false, true)) {
          action.run();
        }
      }
    };
  }

  private static String clip(Object o) {
    String s = String.valueOf(o);
    return s.length() > 300 ? s.substring(0, 300) + "...(" + s.length() + " chars)" : s;
  }

  private String name() {
    return getClass().getSimpleName();
  }
}
