package org.apache.spark.shuffle.sluice;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Stream;

/**
 * A Sluice cluster running as real {@code sluice} processes, for tests.
 *
 * <p>{@link #local} runs {@code sluice local} (master and workers in one process); {@link
 * #separate} runs one {@code sluice master} process and one {@code sluice worker} process per
 * worker, so a test can {@link #killWorker SIGKILL} a single worker. Every process binds
 * {@code 127.0.0.1:0} and announces its addresses as one JSON line on stdout when it is ready;
 * the fixture waits for that line (with a deadline), never for a fixed time.
 *
 * <p>Each process's stderr (its logs) goes to {@code <logDir>/<label>-<n>-<process>.log}, by
 * default under {@code target/sluice-logs/}, and is kept after the test so a failure can be
 * diagnosed; {@link #toString()} names the files. Data directories are temporary and deleted on
 * {@link #close()}, which stops every process (SIGTERM, then SIGKILL after a deadline).
 *
 * <p>The binary comes from the system property {@code sluice.binary} (the pom points it at
 * the sluice binary cargo built with the library, {@code ../target/release/sluice} by default).
 */
public final class SluiceCluster implements AutoCloseable {
  /** How long a process may take to print its JSON line. */
  private static final Duration READY_TIMEOUT = Duration.ofSeconds(60);
  /** How long a process may take to exit after SIGTERM before it is killed. */
  private static final Duration STOP_TIMEOUT = Duration.ofSeconds(15);

  private static final AtomicInteger COUNTER = new AtomicInteger();

  /** One worker as the cluster announced it. */
  public static final class Worker {
    public final String id;
    public final String push;
    public final String fetch;
    /** The worker's data directory (all its shuffle files live under it). */
    public final Path dataDir;
    /** The worker's own process, or null when it runs inside {@code sluice local}. */
    final Proc proc;

    Worker(String id, String push, String fetch, Path dataDir, Proc proc) {
      this.id = id;
      this.push = push;
      this.fetch = fetch;
      this.dataDir = dataDir;
      this.proc = proc;
    }

    /** Whether the worker's own process is running (false for workers of {@code local}). */
    public boolean isAlive() {
      return proc != null && proc.process.isAlive();
    }

    /**
     * Whether any regular file (shuffle data or index) exists under the data directory. A file
     * deleted during the walk ends it: the answer is then "no".
     */
    public boolean holdsFiles() {
      try (Stream<Path> files = Files.walk(dataDir)) {
        return files.anyMatch(Files::isRegularFile);
      } catch (IOException | UncheckedIOException e) {
        return false;
      }
    }

    @Override
    public String toString() {
      return id + "(push " + push + ", fetch " + fetch + ")";
    }
  }

  private final String label;
  private final Path dataRoot;
  private final List<Proc> procs = new ArrayList<>();
  private final List<Worker> workers = new ArrayList<>();
  private final List<Proc> masters = new ArrayList<>();
  private String master;
  /** With {@code --secure}: the CA file clients trust, and the name in the certificates. */
  private String tlsCaFile;

  private String tlsServerName;
  private final Thread shutdownHook;

  /** The PEM file of the CA of a {@code --secure} cluster (null otherwise). */
  public String tlsCaFile() {
    return tlsCaFile;
  }

  /** The name in a {@code --secure} cluster's certificates (null otherwise). */
  public String tlsServerName() {
    return tlsServerName;
  }

  private SluiceCluster(String label) throws IOException {
    this.label = label + "-" + COUNTER.incrementAndGet();
    this.dataRoot = Files.createTempDirectory("sluice-data-" + label + "-");
    Files.createDirectories(logDir());
    // If the JVM dies without close() (surefire timeout, ^C), do not leave processes behind.
    this.shutdownHook = new Thread(this::killAll, "sluice-cluster-cleanup");
    Runtime.getRuntime().addShutdownHook(shutdownHook);
  }

  /** {@code sluice local --workers n}: master and workers in one process. */
  public static SluiceCluster local(String label, int workers) throws IOException {
    return local(label, workers, false);
  }

  /**
   * {@code sluice local --workers n}, with {@code secure}: {@code --secure} (a cluster secret,
   * and TLS on every port with a CA of its own, {@link #tlsCaFile}).
   */
  public static SluiceCluster local(String label, int workers, boolean secure) throws IOException {
    SluiceCluster cluster = new SluiceCluster(label);
    try {
      List<String> args =
          new ArrayList<>(
              List.of(
                  "local",
                  "--workers",
                  Integer.toString(workers),
                  "--data-dir",
                  cluster.dataRoot.toString()));
      if (secure) {
        args.add("--secure");
      }
      Proc proc = cluster.start("local", args.toArray(new String[0]));
      Map<String, Object> ready = proc.ready;
      cluster.master = text(ready, "master", proc);
      if (secure) {
        cluster.tlsCaFile = text(ready, "tls_ca_file", proc);
        cluster.tlsServerName = text(ready, "tls_server_name", proc);
      }
      Object list = ready.get("workers");
      if (!(list instanceof List)) {
        throw new IllegalStateException("sluice local announced no \"workers\" list: " + ready);
      }
      for (Object item : (List<?>) list) {
        Map<String, Object> w = object(item, proc);
        String id = text(w, "id", proc);
        cluster.workers.add(
            new Worker(
                id, text(w, "push", proc), text(w, "fetch", proc), cluster.dataRoot.resolve(id), null));
      }
      if (cluster.workers.size() != workers) {
        throw new IllegalStateException(
            "sluice local announced " + cluster.workers.size() + " workers, asked for " + workers);
      }
      return cluster;
    } catch (RuntimeException | IOException e) {
      cluster.close();
      throw e;
    }
  }

  /**
   * One {@code sluice master} process and {@code n} {@code sluice worker} processes ({@code w0},
   * {@code w1}, ...). Short heartbeat and worker timeouts, so the master notices a killed worker
   * within a few seconds.
   */
  public static SluiceCluster separate(String label, int workers) throws IOException {
    SluiceCluster cluster = new SluiceCluster(label);
    try {
      Proc master =
          cluster.start(
              "master",
              "master",
              "--listen",
              "127.0.0.1:0",
              "--admin-listen",
              "127.0.0.1:0",
              "--worker-timeout",
              "3s",
              "--data-dir",
              cluster.dataRoot.resolve("master").toString());
      cluster.master = text(master.ready, "master", master);
      cluster.masters.add(master);
      for (int i = 0; i < workers; i++) {
        cluster.startWorker("w" + i);
      }
      return cluster;
    } catch (RuntimeException | IOException e) {
      cluster.close();
      throw e;
    }
  }

  /**
   * {@code masters} {@code sluice master} processes replicating their state with Raft, and
   * {@code workers} worker processes pointed at all of them. {@link #master()} is the
   * comma-separated endpoint list; {@link #killLeader()} SIGKILLs whichever master leads.
   */
  public static SluiceCluster ha(String label, int masters, int workers) throws IOException {
    SluiceCluster cluster = new SluiceCluster(label);
    try {
      List<String> peers = new ArrayList<>();
      for (int i = 0; i < masters; i++) {
        // Peers must know each other's ports up front: take free ones (bound, then released).
        try (java.net.ServerSocket socket =
            new java.net.ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
          peers.add("127.0.0.1:" + socket.getLocalPort());
        }
      }
      String list = String.join(",", peers);
      for (int i = 0; i < masters; i++) {
        Proc master =
            cluster.start(
                "master-" + i,
                "master",
                "--listen",
                peers.get(i),
                "--admin-listen",
                "127.0.0.1:0",
                "--peers",
                list,
                "--id",
                Integer.toString(i),
                "--worker-timeout",
                "3s",
                "--data-dir",
                cluster.dataRoot.resolve("master-" + i).toString());
        cluster.masters.add(master);
      }
      cluster.master = list;
      for (int i = 0; i < workers; i++) {
        cluster.startWorker("w" + i);
      }
      cluster.leader(Duration.ofSeconds(30));
      return cluster;
    } catch (RuntimeException | IOException e) {
      cluster.close();
      throw e;
    }
  }

  /**
   * The address of the leading master, as {@code sluice admin masters --json} reports it, waiting
   * up to {@code wait} for one to be elected.
   */
  public String leader(Duration wait) throws IOException {
    long deadline = System.nanoTime() + wait.toNanos();
    while (true) {
      ProcessBuilder pb =
          new ProcessBuilder(binary().toString(), "admin", "masters", "--master", master, "--json");
      pb.redirectErrorStream(false);
      pb.redirectError(ProcessBuilder.Redirect.DISCARD);
      Process process = pb.start();
      String out = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
      try {
        process.waitFor(STOP_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new IOException("interrupted", e);
      }
      Object rows = MiniJson.parse(out.trim().isEmpty() ? "[]" : out.trim());
      if (rows instanceof List) {
        for (Object row : (List<?>) rows) {
          if (row instanceof Map) {
            Object leader = ((Map<?, ?>) row).get("leader");
            Object endpoint = ((Map<?, ?>) row).get("endpoint");
            if (leader instanceof String && leader.equals(endpoint)) {
              return (String) leader;
            }
          }
        }
      }
      if (System.nanoTime() > deadline) {
        throw new IllegalStateException("no master leads after " + wait + ": " + out + "; " + this);
      }
      try {
        Thread.sleep(100);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new IOException("interrupted", e);
      }
    }
  }

  /** SIGKILLs the leading master (of an {@link #ha} cluster); returns its address. */
  public String killLeader() throws IOException, InterruptedException {
    String leader = leader(Duration.ofSeconds(30));
    for (Proc proc : masters) {
      if (proc.ready != null && leader.equals(proc.ready.get("master")) && proc.process.isAlive()) {
        proc.process.destroyForcibly();
        if (!proc.process.waitFor(STOP_TIMEOUT.toSeconds(), TimeUnit.SECONDS)) {
          throw new IllegalStateException("master " + leader + " survived SIGKILL");
        }
        return leader;
      }
    }
    throw new IllegalStateException("the leader " + leader + " is none of this cluster's masters");
  }

  /**
   * Starts one more worker process (only for {@link #separate} clusters); {@code settings} are
   * more of its config keys as flags ({@code "--fault-write-delay", "100ms"}).
   */
  public Worker startWorker(String id, String... settings) throws IOException {
    Path dir = dataRoot.resolve(id);
    Files.createDirectories(dir);
    List<String> args =
        new ArrayList<>(
            List.of(
                "worker",
                "--master",
                master,
                "--id",
                id,
                "--push-listen",
                "127.0.0.1:0",
                "--fetch-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--data-dirs",
                dir.toString(),
                "--heartbeat-interval",
                "500ms"));
    args.addAll(List.of(settings));
    Proc proc = start(id, args.toArray(new String[0]));
    Worker worker =
        new Worker(
            text(proc.ready, "id", proc),
            text(proc.ready, "push", proc),
            text(proc.ready, "fetch", proc),
            dir,
            proc);
    workers.add(worker);
    return worker;
  }

  /**
   * The master's {@code host:port} (every master's, comma-separated, for {@link #ha}): the value
   * of {@code spark.sluice.master.endpoints}.
   */
  public String master() {
    return master;
  }

  public List<Worker> workers() {
    return List.copyOf(workers);
  }

  /** Kills a worker process with SIGKILL (no graceful shutdown) and waits until it is gone. */
  public void killWorker(Worker worker) throws InterruptedException {
    if (worker.proc == null) {
      throw new IllegalStateException(
          "worker " + worker.id + " runs inside `sluice local`; use SluiceCluster.separate");
    }
    worker.proc.process.destroyForcibly(); // SIGKILL on Unix
    if (!worker.proc.process.waitFor(STOP_TIMEOUT.toSeconds(), TimeUnit.SECONDS)) {
      throw new IllegalStateException("worker " + worker.id + " survived SIGKILL");
    }
  }

  /** Where the process logs of this cluster go. */
  public static Path logDir() {
    return Paths.get(System.getProperty("sluice.logDir", "target/sluice-logs")).toAbsolutePath();
  }

  /** The log files of this cluster's processes, for assertion messages. */
  public List<Path> logFiles() {
    List<Path> files = new ArrayList<>();
    for (Proc p : procs) {
      files.add(p.log);
    }
    return files;
  }

  @Override
  public String toString() {
    return "sluice cluster " + label + " (master " + master + ", workers " + workers + ", logs " + logFiles() + ")";
  }

  @Override
  public void close() {
    for (Proc p : procs) {
      p.process.destroy(); // SIGTERM: a graceful stop
    }
    for (Proc p : procs) {
      try {
        if (!p.process.waitFor(STOP_TIMEOUT.toSeconds(), TimeUnit.SECONDS)) {
          p.process.destroyForcibly();
          p.process.waitFor(STOP_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        }
      } catch (InterruptedException e) {
        p.process.destroyForcibly();
        Thread.currentThread().interrupt();
      }
    }
    try {
      Runtime.getRuntime().removeShutdownHook(shutdownHook);
    } catch (IllegalStateException e) {
      // The JVM is already shutting down; the hook runs anyway.
    }
    deleteRecursively(dataRoot);
  }

  private void killAll() {
    for (Proc p : procs) {
      p.process.destroyForcibly();
    }
  }

  /** Starts {@code sluice <args>} and waits for its JSON line. */
  private Proc start(String name, String... args) throws IOException {
    Path binary = binary();
    List<String> command = new ArrayList<>();
    command.add(binary.toString());
    command.addAll(List.of(args));
    Path log = logDir().resolve(label + "-" + name + ".log");
    Files.writeString(log, "$ " + String.join(" ", command) + "\n", StandardCharsets.UTF_8);
    ProcessBuilder pb = new ProcessBuilder(command);
    pb.redirectError(ProcessBuilder.Redirect.appendTo(log.toFile()));
    pb.redirectInput(ProcessBuilder.Redirect.PIPE);
    if (System.getenv("RUST_LOG") == null) {
      pb.environment().put("RUST_LOG", "info");
    }
    Process process = pb.start();
    Proc proc = new Proc(name, process, log);
    procs.add(proc);
    proc.ready = proc.awaitReady();
    return proc;
  }

  private static Path binary() {
    String configured = System.getProperty("sluice.binary");
    Path path =
        configured != null
            ? Paths.get(configured)
            : Paths.get("..", "target", "release", "sluice"); // run from client-jvm/
    path = path.toAbsolutePath().normalize();
    if (!Files.isExecutable(path)) {
      throw new IllegalStateException(
          "no sluice binary at "
              + path
              + " (set -Dsluice.binary, or build it: cargo build --release -p sluice)");
    }
    return path;
  }

  private static String text(Map<String, Object> node, String field, Proc proc) {
    Object value = node.get(field);
    if (!(value instanceof String)) {
      throw new IllegalStateException(
          "sluice " + proc.name + " announced " + node + " without \"" + field + "\"; log: " + proc.log);
    }
    return (String) value;
  }

  @SuppressWarnings("unchecked")
  private static Map<String, Object> object(Object value, Proc proc) {
    if (!(value instanceof Map)) {
      throw new IllegalStateException(
          "sluice " + proc.name + " announced " + value + " where an object was expected; log: " + proc.log);
    }
    return (Map<String, Object>) value;
  }

  private static void deleteRecursively(Path root) {
    if (!Files.exists(root)) {
      return;
    }
    try (Stream<Path> paths = Files.walk(root)) {
      paths.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
    } catch (IOException e) {
      // Best effort: a leftover temp directory must not fail a test.
    }
  }

  /** One child process. */
  static final class Proc {
    final String name;
    final Process process;
    final Path log;
    Map<String, Object> ready;

    Proc(String name, Process process, Path log) {
      this.name = name;
      this.process = process;
      this.log = log;
    }

    /**
     * Reads the first stdout line (the JSON announcement) on a daemon thread that keeps copying
     * any later stdout lines into the log, and waits for it up to {@link #READY_TIMEOUT}.
     */
    Map<String, Object> awaitReady() {
      CompletableFuture<String> first = new CompletableFuture<>();
      Thread pump =
          new Thread(
              () -> {
                try (BufferedReader out =
                        new BufferedReader(
                            new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
                    OutputStream rest =
                        Files.newOutputStream(log, StandardOpenOption.APPEND)) {
                  first.complete(out.readLine()); // null: stdout closed before any line
                  String line;
                  while ((line = out.readLine()) != null) {
                    rest.write(("[stdout] " + line + "\n").getBytes(StandardCharsets.UTF_8));
                    rest.flush();
                  }
                } catch (IOException e) {
                  first.completeExceptionally(e);
                }
              },
              "sluice-" + name + "-stdout");
      pump.setDaemon(true);
      pump.start();
      String line;
      try {
        line = first.get(READY_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
      } catch (TimeoutException e) {
        throw failure("printed no ready line within " + READY_TIMEOUT.toSeconds() + "s");
      } catch (ExecutionException e) {
        throw failure("stdout failed: " + e.getCause());
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw failure("interrupted while waiting for the ready line");
      }
      if (line == null) {
        String exit = "";
        try {
          if (process.waitFor(STOP_TIMEOUT.toSeconds(), TimeUnit.SECONDS)) {
            exit = " (exit code " + process.exitValue() + ")";
          }
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
        throw failure("closed stdout before its ready line" + exit);
      }
      try {
        return object(MiniJson.parse(line), this);
      } catch (IllegalArgumentException e) {
        throw failure("printed a ready line that is not JSON: " + line);
      }
    }

    private IllegalStateException failure(String what) {
      return new IllegalStateException("sluice " + name + " " + what + "; log " + log + ":\n" + tail());
    }

    private String tail() {
      try {
        List<String> lines = Files.readAllLines(log, StandardCharsets.UTF_8);
        return String.join("\n", lines.subList(Math.max(0, lines.size() - 30), lines.size()));
      } catch (IOException e) {
        return "(log unreadable: " + e + ")";
      }
    }
  }
}
