package org.apache.spark.shuffle.sluice;

import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The JVM's native Sluice clients: one per (master, settings), normally exactly one. A client owns
 * the process's connections and its tokio runtime, so every task of an executor shares it.
 *
 * <p>Clients are reference counted: each {@link SluiceShuffleManager} takes a reference on first
 * use and gives it back in {@code stop()}. The last release closes the client, so a JVM that runs
 * several Spark contexts one after another (tests) can point each at a different cluster.
 * Writers and readers opened from a client hold their own reference to the native client core,
 * so closing the client under a still-running task does not free memory it uses.
 */
final class NativeClients {
  private static final Logger LOG = LoggerFactory.getLogger(NativeClients.class);

  private static final class Entry {
    final long handle;
    int refs;

    Entry(long handle) {
      this.handle = handle;
    }
  }

  private static final Map<List<String>, Entry> CLIENTS = new HashMap<>();

  private NativeClients() {}

  /** A client of {@code master} with {@code settings}; pair with {@link #release}. */
  static synchronized long acquire(String master, String[] settings) {
    List<String> key = key(master, settings);
    Entry entry = CLIENTS.get(key);
    if (entry == null) {
      entry = new Entry(SluiceNative.newClient(master, settings.clone()));
      CLIENTS.put(key, entry);
      LOG.info("sluice client created for master {} with settings {}", master,
          Arrays.toString(redacted(settings)));
    }
    entry.refs++;
    return entry.handle;
  }

  static synchronized void release(String master, String[] settings) {
    List<String> key = key(master, settings);
    Entry entry = CLIENTS.get(key);
    if (entry == null) {
      return;
    }
    if (--entry.refs == 0) {
      CLIENTS.remove(key);
      SluiceNative.closeClient(entry.handle);
      LOG.info("sluice client for master {} closed", master);
    }
  }

  /** {@code settings} for a log: the application secret's value is never shown. */
  static String[] redacted(String[] settings) {
    String[] shown = settings.clone();
    for (int i = 0; i < shown.length; i++) {
      if (shown[i].startsWith("app_secret=")) {
        shown[i] = "app_secret=<redacted>";
      }
    }
    return shown;
  }

  private static List<String> key(String master, String[] settings) {
    String[] key = new String[settings.length + 1];
    key[0] = master;
    System.arraycopy(settings, 0, key, 1, settings.length);
    return List.of(key);
  }
}
