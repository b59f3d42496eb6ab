package org.apache.spark.shuffle.sluice;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The process fixture itself: readiness, addresses, SIGKILL of one worker, cleanup. */
class SluiceClusterTest {

  static boolean accepts(String hostPort) {
    int colon = hostPort.lastIndexOf(':');
    try (Socket s = new Socket()) {
      s.connect(
          new InetSocketAddress(hostPort.substring(0, colon), Integer.parseInt(hostPort.substring(colon + 1))),
          2_000);
      return true;
    } catch (IOException e) {
      return false;
    }
  }

  @Test
  @Timeout(60)
  void localClusterAnnouncesListeningAddressesAndStopsOnClose() throws Exception {
    String master;
    String push;
    try (SluiceCluster cluster = SluiceCluster.local("SluiceClusterTest", 2)) {
      master = cluster.master();
      assertEquals(2, cluster.workers().size());
      push = cluster.workers().get(1).push;
      assertTrue(accepts(master), "master " + master + " does not accept connections");
      assertTrue(accepts(push), "worker push port " + push + " does not accept connections");
      assertTrue(cluster.logFiles().get(0).toFile().length() > 0, "no log written");
      assertThrows(IllegalStateException.class, () -> cluster.killWorker(cluster.workers().get(0)));
    }
    assertFalse(accepts(master), "master still listening after close");
    assertFalse(accepts(push), "worker still listening after close");
  }

  @Test
  @Timeout(60)
  void separateClusterKillsOneWorker() throws Exception {
    try (SluiceCluster cluster = SluiceCluster.separate("SluiceClusterTest", 2)) {
      SluiceCluster.Worker w0 = cluster.workers().get(0);
      SluiceCluster.Worker w1 = cluster.workers().get(1);
      assertEquals("w0", w0.id);
      assertTrue(accepts(cluster.master()));
      assertTrue(accepts(w0.fetch));
      cluster.killWorker(w0);
      assertFalse(w0.isAlive());
      assertFalse(accepts(w0.fetch), "killed worker still listening");
      assertTrue(w1.isAlive());
      assertTrue(accepts(w1.fetch));
    }
  }
}
