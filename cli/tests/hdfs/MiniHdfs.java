// A real HDFS for the DFS tests: Hadoop's MiniDFSCluster (a name node and one data node in this
// JVM, from Maven Central's hadoop-client-minicluster). Prints the name node's URL, then runs
// until its standard input closes. Argument: the directory it keeps its blocks in.
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

public class MiniHdfs {
    public static void main(String[] args) throws Exception {
        Configuration conf = new Configuration();
        conf.set("hdfs.minidfs.basedir", args[0]);
        conf.set("dfs.datanode.hostname", "127.0.0.1");
        conf.setBoolean("dfs.client.use.datanode.hostname", true);
        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf).numDataNodes(1).build();
        cluster.waitActive();
        System.out.println("hdfs://127.0.0.1:" + cluster.getNameNodePort());
        System.out.flush();
        while (System.in.read() != -1) { }
        cluster.shutdown();
    }
}
