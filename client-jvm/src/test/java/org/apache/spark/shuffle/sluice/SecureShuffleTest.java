package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * Spark jobs through a secured Sluice cluster ({@code sluice local --secure}: a cluster secret,
 * TLS on every port) with {@code spark.authenticate=true}: the application authenticates with
 * the secret Spark generates for it, over TLS, and gets the built-in shuffle's answers. A client
 * without the application's secret is refused.
 */
class SecureShuffleTest extends ShuffleSuite {

  @Override
  protected List<ShuffleJob<?>> jobs() {
    return List.of(RddShuffleTest.GROUP_BY_KEY, SqlShuffleTest.GROUP_BY_ORDER_BY);
  }

  @Override
  protected SluiceCluster startCluster() throws IOException {
    return SluiceCluster.local(getClass().getSimpleName(), 2, true);
  }

  @Override
  protected Map<String, String> sparkConf() {
    Map<String, String> conf = super.sparkConf();
    // Both sessions authenticate (local mode generates the secret); the built-in one ignores
    // the Sluice keys.
    conf.put("spark.authenticate", "true");
    if (cluster != null) {
      conf.put("spark.sluice.tls.enabled", "true");
      conf.put("spark.sluice.tls.caFile", cluster.tlsCaFile());
      conf.put("spark.sluice.tls.serverName", cluster.tlsServerName());
    }
    return conf;
  }

  @Test
  void groupByKeyMatchesBuiltin() throws Exception {
    assertMatchesBuiltin(RddShuffleTest.GROUP_BY_KEY);
  }

  @Test
  void sqlAggregationMatchesBuiltin() throws Exception {
    assertMatchesBuiltin(SqlShuffleTest.GROUP_BY_ORDER_BY);
  }

  @Test
  void aClientWithoutTheApplicationSecretIsRefused() {
    if (cluster == null) {
      return; // builtin-only mode: no cluster to refuse anything
    }
    String[] settings = {
      "tls=true", "tls_ca_file=" + cluster.tlsCaFile(), "tls_server_name=" + cluster.tlsServerName()
    };
    long client = SluiceNative.newClient(cluster.master(), settings);
    try {
      SluiceException refused =
          assertThrows(
              SluiceException.class,
              () -> SluiceNative.registerShuffle(client, "no-secret-app", 0, 1, 1));
      assertTrue(
          refused.getMessage().contains("requires authentication"), refused.getMessage());
    } finally {
      SluiceNative.closeClient(client);
    }
  }
}
