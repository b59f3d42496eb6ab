package org.apache.spark.shuffle.sluice;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.Set;
import org.apache.spark.SparkConf;
import scala.Tuple2;

/**
 * The {@code spark.sluice.*} settings, read once from the {@link SparkConf}.
 *
 * <table>
 *   <caption>Keys</caption>
 *   <tr><th>key</th><th>default</th><th>meaning</th></tr>
 *   <tr><td>{@code spark.sluice.master.endpoints}</td><td>(required)</td>
 *       <td>comma-separated {@code host:port} of the Sluice masters (all of them when the
 *           masters are replicated: the native client finds the leader and follows it)</td></tr>
 *   <tr><td>{@code spark.sluice.push.bufferSize}</td><td>{@code 256k}</td>
 *       <td>serialized bytes a map task buffers per partition before handing them to the native
 *           client as one chunk</td></tr>
 *   <tr><td>{@code spark.sluice.app.heartbeatInterval}</td><td>{@code 30s}</td>
 *       <td>how often the driver tells the master the application is alive</td></tr>
 *   <tr><td>{@code spark.sluice.client.<key>}</td><td></td>
 *       <td>passed verbatim to the native client as {@code <key>=<value>} ({@code replication},
 *           {@code batch_size}, {@code push_size}, {@code max_inflight_pushes}, {@code max_buffered},
 *           {@code compression}, {@code connect_timeout_ms}, {@code request_timeout_ms},
 *           {@code request_timeout_min_ms}, {@code push_retry_timeout_ms}, {@code prefetch_chunks}, {@code layout_timeout_ms},
 *           {@code master_retry_timeout_ms}, {@code master_request_timeout_ms});
 *           sizes may be written {@code 1m}, {@code *_ms} durations {@code 30s}; an unknown key
 *           fails when the client is created</td></tr>
 *   <tr><td>{@code spark.sluice.auth.enabled}</td><td>{@code spark.authenticate}</td>
 *       <td>authenticate to the Sluice cluster as this application (needed when the cluster runs
 *           with a cluster secret): the driver registers the application's key with the master,
 *           and every call and connection of the driver and executors proves it</td></tr>
 *   <tr><td>{@code spark.sluice.auth.secret}</td><td>Spark's own secret</td>
 *       <td>the application's secret; unset, the secret Spark already gives the driver and
 *           executors for {@code spark.authenticate} is used</td></tr>
 *   <tr><td>{@code spark.sluice.tls.enabled}</td><td>{@code false}</td>
 *       <td>dial the Sluice masters and workers with TLS</td></tr>
 *   <tr><td>{@code spark.sluice.tls.caFile}</td><td></td>
 *       <td>PEM file of the CAs that sign the Sluice servers' certificates</td></tr>
 *   <tr><td>{@code spark.sluice.tls.serverName}</td><td>the dialed host</td>
 *       <td>the name expected in the Sluice servers' certificates</td></tr>
 * </table>
 */
final class SluiceConf {
  static final String MASTER_ENDPOINTS = "spark.sluice.master.endpoints";
  static final String PUSH_BUFFER_SIZE = "spark.sluice.push.bufferSize";
  static final String HEARTBEAT_INTERVAL = "spark.sluice.app.heartbeatInterval";
  static final String CLIENT_PREFIX = "spark.sluice.client.";

  static final String AUTH_ENABLED = "spark.sluice.auth.enabled";
  static final String AUTH_SECRET = "spark.sluice.auth.secret";
  static final String SPARK_AUTHENTICATE = "spark.authenticate";
  static final String TLS_ENABLED = "spark.sluice.tls.enabled";
  static final String TLS_CA_FILE = "spark.sluice.tls.caFile";
  static final String TLS_SERVER_NAME = "spark.sluice.tls.serverName";

  static final String DATA_IO_KEY = "spark.shuffle.sort.io.plugin.class";

  /**
   * Every configured master as the native client takes them: the {@code host:port} entries in
   * order, joined by commas, blanks and empty entries dropped.
   */
  final String master;
  /** Every configured master, in order. */
  final List<String> masters;
  final int pushBufferSize;
  final long heartbeatIntervalMs;
  /** {@code key=value} settings for {@link SluiceNative#newClient}, sorted by key. */
  final String[] clientSettings;
  /** Whether the application authenticates to the Sluice cluster. */
  final boolean authEnabled;
  /** {@code spark.sluice.auth.secret}, or null to use Spark's own secret. */
  final String authSecret;

  /** Native settings that are byte sizes; Spark-style values ({@code 4m}) are turned into bytes. */
  private static final Set<String> SIZE_SETTINGS =
      Set.of("batch_size", "push_size", "max_buffered");

  SluiceConf(SparkConf conf) {
    String endpoints;
    try {
      endpoints = conf.get(MASTER_ENDPOINTS);
    } catch (NoSuchElementException e) {
      throw new IllegalArgumentException(
          MASTER_ENDPOINTS + " is not set: give the Sluice masters as host:port[,host:port...]",
          e);
    }
    List<String> parsed = new ArrayList<>();
    for (String endpoint : endpoints.split(",")) {
      String trimmed = endpoint.trim();
      if (!trimmed.isEmpty()) {
        parsed.add(trimmed);
      }
    }
    if (parsed.isEmpty()) {
      throw new IllegalArgumentException(MASTER_ENDPOINTS + " is empty: give host:port");
    }
    masters = List.copyOf(parsed);
    master = String.join(",", masters);

    long bufferSize = conf.getSizeAsBytes(PUSH_BUFFER_SIZE, "256k");
    if (bufferSize < 1 || bufferSize > (Integer.MAX_VALUE >> 2)) {
      throw new IllegalArgumentException(
          PUSH_BUFFER_SIZE + " must be between 1 byte and 512m, got " + bufferSize);
    }
    pushBufferSize = (int) bufferSize;

    heartbeatIntervalMs = conf.getTimeAsMs(HEARTBEAT_INTERVAL, "30s");
    if (heartbeatIntervalMs <= 0) {
      throw new IllegalArgumentException(HEARTBEAT_INTERVAL + " must be positive");
    }

    authEnabled = conf.getBoolean(AUTH_ENABLED, conf.getBoolean(SPARK_AUTHENTICATE, false));
    authSecret = conf.contains(AUTH_SECRET) ? conf.get(AUTH_SECRET) : null;

    Tuple2<String, String>[] client = conf.getAllWithPrefix(CLIENT_PREFIX);
    List<String> settings = new ArrayList<>();
    for (Tuple2<String, String> setting : client) {
      if (setting._1().equals("app_secret")) {
        throw new IllegalArgumentException(
            CLIENT_PREFIX + "app_secret is not a setting: use " + AUTH_SECRET);
      }
      settings.add(setting._1() + "=" + clientValue(conf, setting._1(), setting._2()));
    }
    if (conf.getBoolean(TLS_ENABLED, false)) {
      settings.add("tls=true");
      if (conf.contains(TLS_CA_FILE)) {
        settings.add("tls_ca_file=" + conf.get(TLS_CA_FILE).trim());
      }
      if (conf.contains(TLS_SERVER_NAME)) {
        settings.add("tls_server_name=" + conf.get(TLS_SERVER_NAME).trim());
      }
    }
    String[] sorted = settings.toArray(new String[0]);
    Arrays.sort(sorted);
    clientSettings = sorted;
  }

  /**
   * The native client takes whole numbers (bytes, milliseconds). Sizes and {@code *_ms} durations
   * may be written the Spark way ({@code 1m}, {@code 30s}) and are converted here.
   */
  private static String clientValue(SparkConf conf, String name, String value) {
    String key = CLIENT_PREFIX + name;
    if (SIZE_SETTINGS.contains(name)) {
      return Long.toString(conf.getSizeAsBytes(key));
    }
    if (name.endsWith("_ms")) {
      return Long.toString(conf.getTimeAsMs(key));
    }
    return value.trim();
  }
}
