package org.apache.spark.shuffle.sluice;

import java.util.Arrays;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.scheduler.StageInfo;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.shuffle.ShuffleHandle;
import org.apache.spark.shuffle.ShuffleManager;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Option;

/**
 * Spark's shuffle manager for Sluice: map tasks push their output to Sluice workers through the
 * native client, reduce tasks read it back from there; executors store nothing.
 *
 * <pre>
 *   spark.shuffle.manager=org.apache.spark.shuffle.sluice.SluiceShuffleManager
 *   spark.shuffle.sort.io.plugin.class=org.apache.spark.shuffle.sluice.SluiceShuffleDataIO
 *   spark.sluice.master.endpoints=host:port[,host:port...]
 * </pre>
 *
 * <p>Spark instantiates {@link SluiceShuffleManager}, the line's own subclass (compat/manager-*):
 * the interface it declares is one of the few things that differ between Spark lines.
 *
 * <p>Settings are listed on {@link SluiceConf}. One native client serves the whole JVM (driver or
 * executor); it is created on first use, and its metrics then go to Spark's metrics system
 * ({@link SluiceMetricsSource}, source {@code sluice}).
 *
 * <p>On the driver the manager also
 *
 * <ul>
 *   <li>heartbeats the application to the Sluice master (from the first shuffle on), so the
 *       cluster keeps its data while the application lives and collects it once it is gone;
 *   <li>watches stage submissions to learn how many stage attempts each shuffle had, because each
 *       attempt writes its own Sluice shuffle ({@link StageAttempts});
 *   <li>deletes every Sluice shuffle of a Spark shuffle when Spark unregisters it, and whatever is
 *       left when it stops.
 * </ul>
 */
abstract class SluiceShuffleManagerBase implements ShuffleManager {
  private static final Logger LOG = LoggerFactory.getLogger(SluiceShuffleManager.class);

  /** How long {@link #stop} spends deleting shuffles Spark did not unregister. */
  private static final long STOP_CLEANUP_MILLIS = 10_000;

  private final SparkConf sparkConf;
  private final SluiceConf conf;
  private final boolean isDriver;
  private final SluiceShuffleBlockResolver resolver;

  /** Guards the client reference, the heartbeat and the listener. */
  private final Object lock = new Object();
  private long client;
  /** The settings {@link #client} was acquired with (released with the same). */
  private String[] clientSettings;
  private boolean stopped;
  private ScheduledExecutorService heartbeat;
  private SparkContext watchedContext;

  /** Driver: the application of each live Spark shuffle. */
  private final Map<Integer, String> shuffles = new ConcurrentHashMap<>();
  /** Driver: the highest stage attempt submitted for each Spark shuffle. */
  private final Map<Integer, Integer> maxStageAttempt = new ConcurrentHashMap<>();

  SluiceShuffleManagerBase(SparkConf conf, boolean isDriver) {
    // First, before any class that differs between Spark lines is touched.
    SparkLine.check();
    this.resolver = new SluiceShuffleBlockResolver();
    this.sparkConf = conf;
    this.conf = new SluiceConf(conf);
    this.isDriver = isDriver;
    if (isDriver) {
      warnAboutSettings(conf);
    }
  }

  @Override
  public <K, V, C> ShuffleHandle registerShuffle(
      int shuffleId, ShuffleDependency<K, V, C> dependency) {
    String appId = sparkConf.get("spark.app.id", null);
    if (appId == null) {
      throw new IllegalStateException("spark.app.id is not set; Sluice needs the application id");
    }
    int numMaps = dependency.rdd().getNumPartitions();
    int numPartitions = dependency.partitioner().numPartitions();
    if (isDriver) {
      shuffles.put(shuffleId, appId);
      startDriverServices(appId, dependency.rdd().sparkContext());
    }
    return new SluiceShuffleHandle<>(shuffleId, dependency, appId, numMaps, numPartitions);
  }

  @Override
  @SuppressWarnings("unchecked")
  public <K, V> ShuffleWriter<K, V> getWriter(
      ShuffleHandle handle, long mapId, TaskContext context, ShuffleWriteMetricsReporter metrics) {
    SluiceShuffleHandle<K, V, Object> sluiceHandle = (SluiceShuffleHandle<K, V, Object>) handle;
    return new SluiceShuffleWriter<>(
        sluiceHandle, context, metrics, client(), conf.pushBufferSize);
  }

  @Override
  @SuppressWarnings("unchecked")
  public <K, C> ShuffleReader<K, C> getReader(
      ShuffleHandle handle,
      int startMapIndex,
      int endMapIndex,
      int startPartition,
      int endPartition,
      TaskContext context,
      ShuffleReadMetricsReporter metrics) {
    SluiceShuffleHandle<K, Object, C> sluiceHandle = (SluiceShuffleHandle<K, Object, C>) handle;
    return new SluiceShuffleReader<>(
        sluiceHandle,
        startMapIndex,
        endMapIndex,
        startPartition,
        endPartition,
        context,
        metrics,
        client());
  }

  /**
   * Spark calls this on the driver and on every executor. Executors hold nothing; the driver
   * deletes the Sluice shuffle of every stage attempt it saw.
   */
  @Override
  public boolean unregisterShuffle(int shuffleId) {
    Integer attempts = maxStageAttempt.remove(shuffleId);
    String appId = shuffles.remove(shuffleId);
    if (isDriver && appId != null) {
      deleteShuffle(appId, shuffleId, attempts == null ? 0 : attempts);
    }
    return true;
  }

  /** Part of ShuffleManager up to Spark 4.2, of BlockingShuffleManager from 4.3. */
  public ShuffleBlockResolver shuffleBlockResolver() {
    return resolver;
  }

  @Override
  public void stop() {
    synchronized (lock) {
      if (stopped) {
        return;
      }
      stopped = true;
      if (heartbeat != null) {
        heartbeat.shutdownNow();
        heartbeat = null;
      }
    }
    if (isDriver && !shuffles.isEmpty()) {
      long deadline = System.currentTimeMillis() + STOP_CLEANUP_MILLIS;
      for (Map.Entry<Integer, String> shuffle : shuffles.entrySet()) {
        if (System.currentTimeMillis() > deadline) {
          LOG.info("leaving the remaining sluice shuffles to expire with the application");
          break;
        }
        Integer attempts = maxStageAttempt.get(shuffle.getKey());
        deleteShuffle(shuffle.getValue(), shuffle.getKey(), attempts == null ? 0 : attempts);
      }
      shuffles.clear();
      maxStageAttempt.clear();
    }
    synchronized (lock) {
      if (client != 0) {
        client = 0;
        NativeClients.release(conf.master, clientSettings);
      }
    }
  }

  /** The native client, created on first use. */
  long client() {
    synchronized (lock) {
      if (client == 0) {
        if (stopped) {
          throw new IllegalStateException("the Sluice shuffle manager is stopped");
        }
        clientSettings = withSecret(conf);
        client = NativeClients.acquire(conf.master, clientSettings);
        SluiceMetricsSource.register();
      }
      return client;
    }
  }

  /**
   * The native client's settings: {@link SluiceConf#clientSettings}, plus the application's
   * secret when it authenticates ({@code spark.sluice.auth.secret}, else the secret Spark holds
   * for {@code spark.authenticate}, which the driver generates or is given and hands its
   * executors).
   */
  private static String[] withSecret(SluiceConf conf) {
    if (!conf.authEnabled) {
      return conf.clientSettings;
    }
    String secret = conf.authSecret;
    if (secret == null) {
      SparkEnv env = SparkEnv.get();
      secret = env == null ? null : env.securityManager().getSecretKey();
    }
    if (secret == null || secret.isEmpty()) {
      throw new IllegalArgumentException(
          "Sluice authentication is on (spark.authenticate or spark.sluice.auth.enabled) but"
              + " there is no secret: set spark.sluice.auth.secret, or spark.authenticate.secret"
              + " where Spark does not generate one");
    }
    String[] settings = Arrays.copyOf(conf.clientSettings, conf.clientSettings.length + 1);
    settings[settings.length - 1] = "app_secret=" + secret;
    return settings;
  }

  /** Deletes the Sluice shuffles of stage attempts 0..maxAttempt of a Spark shuffle. */
  private void deleteShuffle(String appId, int shuffleId, int maxAttempt) {
    long client;
    try {
      client = client();
    } catch (RuntimeException e) {
      LOG.warn("cannot delete shuffle {} on sluice: {}", shuffleId, e.toString());
      return;
    }
    int last = Math.min(maxAttempt, StageAttempts.SLOTS - 1);
    for (int attempt = 0; attempt <= last; attempt++) {
      int sluiceId = StageAttempts.sluiceShuffleId(shuffleId, attempt);
      try {
        SluiceNative.unregisterShuffle(client, appId, sluiceId);
      } catch (SluiceException e) {
        // Usually "not found": a stage attempt that never wrote anything.
        LOG.debug("deleting sluice shuffle {} (shuffle {} attempt {}): {}",
            sluiceId, shuffleId, attempt, e.getMessage());
      }
    }
  }

  private void startDriverServices(String appId, SparkContext context) {
    synchronized (lock) {
      if (stopped) {
        return;
      }
      if (heartbeat == null) {
        heartbeat =
            Executors.newSingleThreadScheduledExecutor(
                runnable -> {
                  Thread thread = new Thread(runnable, "sluice-app-heartbeat");
                  thread.setDaemon(true);
                  return thread;
                });
        heartbeat.scheduleWithFixedDelay(
            () -> heartbeat(appId), 0, conf.heartbeatIntervalMs, TimeUnit.MILLISECONDS);
      }
      if (watchedContext != context) {
        watchedContext = context;
        context.addSparkListener(new StageAttemptListener());
      }
    }
  }

  private void heartbeat(String appId) {
    try {
      SluiceNative.appHeartbeat(client(), appId);
    } catch (RuntimeException e) {
      // Keep going: the next beat may reach the master; the cluster only expires the
      // application after several missed beats.
      LOG.warn("sluice application heartbeat for {} failed: {}", appId, e.toString());
    }
  }

  /** Records the highest attempt of every shuffle map stage. */
  private final class StageAttemptListener extends SparkListener {
    @Override
    public void onStageSubmitted(SparkListenerStageSubmitted event) {
      StageInfo info = event.stageInfo();
      Option<Object> shuffleId = info.shuffleDepId();
      if (shuffleId.isDefined()) {
        maxStageAttempt.merge((Integer) shuffleId.get(), info.attemptNumber(), Math::max);
      }
    }
  }

  private static void warnAboutSettings(SparkConf conf) {
    String dataIo = conf.get(SluiceConf.DATA_IO_KEY, "");
    if (!SluiceShuffleDataIO.class.getName().equals(dataIo)) {
      LOG.warn(
          "{} is not {}: Spark will treat shuffle output as lost with its executor (re-running"
              + " finished map tasks) and dynamic allocation needs an external shuffle service",
          SluiceConf.DATA_IO_KEY,
          SluiceShuffleDataIO.class.getName());
    }
    if (!SparkLine.declaresReliableStorage()
        && conf.getBoolean("spark.dynamicAllocation.enabled", false)
        && !conf.getBoolean("spark.dynamicAllocation.shuffleTracking.enabled", false)
        && !conf.getBoolean("spark.shuffle.service.enabled", false)) {
      LOG.warn(
          "Spark {} cannot be told that shuffle data outlives executors (a Spark 3.5 hook):"
              + " dynamic allocation needs spark.dynamicAllocation.shuffleTracking.enabled=true"
              + " with Sluice on this line",
          SparkLine.running());
    }
    if (conf.getBoolean("spark.io.encryption.enabled", false)) {
      LOG.warn("spark.io.encryption.enabled is set, but Sluice does not encrypt shuffle data");
    }
  }
}
