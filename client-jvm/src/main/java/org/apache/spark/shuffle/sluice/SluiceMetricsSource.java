package org.apache.spark.shuffle.sluice;

import com.codahale.metrics.Gauge;
import com.codahale.metrics.MetricRegistry;
import java.lang.ref.WeakReference;
import org.apache.spark.SparkEnv;
import org.apache.spark.metrics.source.Source;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The native client's metrics in Spark's metrics system: source {@code sluice}, one gauge per
 * total of this JVM's clients ({@link SluiceNative#clientMetrics}), so every sink Spark is
 * configured with (JMX, Prometheus servlet, ...) reports them per executor and for the driver.
 *
 * <ul>
 *   <li>{@code pushBytes}: bytes of batches the workers acknowledged;
 *   <li>{@code pushRetries}: pushes sent again after a failure;
 *   <li>{@code revives}: revive requests made to the master;
 *   <li>{@code fetchRetries}: fetch requests sent again to the same copy;
 *   <li>{@code dataLost}: data-loss errors returned to tasks.
 * </ul>
 */
final class SluiceMetricsSource implements Source {
  private static final Logger LOG = LoggerFactory.getLogger(SluiceMetricsSource.class);

  static final String SOURCE_NAME = "sluice";

  /** The gauges' names, in the order of {@link SluiceNative#clientMetrics}. */
  static final String[] NAMES = {
    "pushBytes", "pushRetries", "revives", "fetchRetries", "dataLost", "timeouts", "hedges"
  };

  /** The Spark environment the source was last registered with. */
  private static WeakReference<SparkEnv> registeredWith = new WeakReference<>(null);

  private final MetricRegistry registry = new MetricRegistry();

  private SluiceMetricsSource() {
    for (int i = 0; i < NAMES.length; i++) {
      int index = i;
      registry.register(NAMES[i], (Gauge<Long>) () -> total(index));
    }
  }

  @Override
  public String sourceName() {
    return SOURCE_NAME;
  }

  @Override
  public MetricRegistry metricRegistry() {
    return registry;
  }

  private static long total(int index) {
    long[] totals = SluiceNative.clientMetrics();
    return index < totals.length ? totals[index] : 0L;
  }

  /**
   * Registers the source with the current Spark environment's metrics system, once per
   * environment (a JVM running several Spark contexts one after another registers it with each).
   */
  static synchronized void register() {
    SparkEnv env = SparkEnv.get();
    if (env == null || registeredWith.get() == env) {
      return;
    }
    registeredWith = new WeakReference<>(env);
    try {
      env.metricsSystem().registerSource(new SluiceMetricsSource());
    } catch (RuntimeException e) {
      // Metrics are an aid: a failure here must not fail the task.
      LOG.warn("cannot register the sluice metrics source: {}", e.toString());
    }
  }
}
