//! The DFS tier on real in-process clusters: a drained worker uploads what it must save to the
//! DFS, and the worker that takes each copy serves it from there; deleting the shuffle deletes
//! its objects, and a restarted worker serves what it took again. Against a real HDFS (Hadoop's
//! MiniDFSCluster from Maven Central, `tests/hdfs/`), a real S3-compatible server (moto's, from PyPI: `pip install
//! 'moto[server]'`, started here on a free port) and a shared file system (`fs://`); a DFS that
//! is down falls back to handing the files to a peer.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{read_records, write_records};
use sluice::local::{LocalCluster, LocalOptions};
use sluice_client::SluiceClient;
use sluice_protocol::ShuffleKey;

const PATIENCE: Duration = Duration::from_secs(30);
const BUCKET: &str = "sluice-dfs-test";

/// A moto S3 server on a free loopback port; killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `METHOD path` on `endpoint` (`http://host:port`): the status and the body.
async fn http(endpoint: &str, method: &str, path: &str) -> (u16, String) {
    common::http(endpoint.trim_start_matches("http://"), method, path, &[]).await
}

async fn moto() -> Moto {
    let binary = std::env::var("SLUICE_MOTO").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = ["-H", "127.0.0.1", "-p", &port.to_string()];
    let spawn = |program: &str, pre: &[&str]| {
        Command::new(program)
            .args(pre)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    // The script pip installs, or the module itself when the script is not on PATH.
    let child = spawn(&binary, &[])
        .or_else(|_| spawn("python3", &["-m", "moto.server"]))
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {binary} ({e}): install moto's S3 server (`pip install 'moto[server]'`) \
                 or set SLUICE_MOTO to its moto_server"
            )
        });
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    let addr = moto.endpoint.trim_start_matches("http://").to_string();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(started.elapsed() < PATIENCE, "moto did not start on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = http(&moto.endpoint, "PUT", &format!("/{BUCKET}")).await;
    assert_eq!(status, 200, "moto did not create the bucket: {body}");
    moto
}

/// The object keys under `prefix` in the test bucket.
async fn keys(moto: &Moto, prefix: &str) -> Vec<String> {
    let (status, body) = http(
        &moto.endpoint,
        "GET",
        &format!("/{BUCKET}?list-type=2&prefix={prefix}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(String::from)
        .collect()
}

fn set_credentials() {
    // moto takes any credentials; the same values in every test of this binary.
    std::env::set_var("AWS_ACCESS_KEY_ID", "sluice-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "sluice-test");
}

/// Three workers on `dfs`; writes a committed shuffle at replication 1, drains worker 0 and
/// reads everything back exactly once. Returns the cluster and the shuffle.
async fn drain_with_dfs(
    dir: &Path,
    dfs: &str,
    endpoint: &str,
) -> (LocalCluster, SluiceClient, ShuffleKey) {
    let mut options = LocalOptions::new(3, dir);
    options.worker.dfs = dfs.to_string();
    options.worker.dfs_endpoint = endpoint.to_string();
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("dfs", 0);
    let ids = write_records(&client, &key, (4, 12), 800, 900).await;
    common::post_ok(
        &cluster.master_admins[0],
        "/api/workers/worker-0/decommission?deadline=20s",
    )
    .await;
    cluster.worker_stopped(0, PATIENCE).await.unwrap();
    let seen = read_records(&client, &key, 0..12, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    (cluster, client, key)
}

/// Bytes the staying workers (1 and 2) took as files from the drained one.
async fn files_handed_in(cluster: &LocalCluster) -> f64 {
    let mut total = 0.0;
    for worker in [1, 2] {
        let admin = cluster.worker_admins()[worker].clone().unwrap();
        let (_, text) = common::get(&admin, "/metrics").await;
        total += common::metric_sum(
            &text,
            "sluice_worker_handover_bytes_total",
            "direction=\"in\"",
        );
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_uploads_to_s3_and_the_copies_are_served_from_there() {
    set_credentials();
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("run-{}", std::process::id());
    let (cluster, client, key) = drain_with_dfs(
        dir.path(),
        &format!("s3://{BUCKET}/{prefix}"),
        &moto.endpoint,
    )
    .await;
    // The copies went up as objects (data and index per copy), not as files to a peer.
    let objects = keys(&moto, &prefix).await;
    assert!(
        objects.iter().any(|k| k.ends_with(".data"))
            && objects.iter().any(|k| k.ends_with(".index")),
        "{objects:?}"
    );
    assert_eq!(
        files_handed_in(&cluster).await,
        0.0,
        "files were handed over though the DFS was up"
    );

    // Deleting the shuffle deletes its objects.
    client.unregister_shuffle(&key).await.unwrap();
    let started = Instant::now();
    loop {
        let left = keys(&moto, &prefix).await;
        if left.is_empty() {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "objects left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_uploads_to_a_shared_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let (mut cluster, client, key) =
        drain_with_dfs(dir.path(), &format!("fs://{}", shared.path().display()), "").await;
    assert!(
        !common::data_files(shared.path()).is_empty(),
        "nothing was uploaded"
    );
    // The workers that took the copies serve them again after a restart.
    let before = read_records(&client, &key, 0..12, None).await.unwrap();
    for worker in [1, 2] {
        cluster.restart_worker(worker).await.unwrap();
    }
    let after = read_records(&client, &key, 0..12, None).await.unwrap();
    assert_eq!(after, before);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_the_dfs_down_hands_the_files_to_a_peer() {
    set_credentials();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let (cluster, _client, _key) = drain_with_dfs(
        dir.path(),
        &format!("s3://{BUCKET}/down"),
        "http://127.0.0.1:1",
    )
    .await;
    assert!(
        files_handed_in(&cluster).await > 0.0,
        "no file was handed over"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_disk_reserve_committed_locations_move_to_the_dfs() {
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(2, dir.path());
    options.worker.dfs = format!("fs://{}", shared.path().display());
    // More than any disk here has free: every committed location moves.
    options.worker.disk_reserve = bytesize::ByteSize::pib(1);
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("dfs-reserve", 0);
    let ids = write_records(&client, &key, (4, 12), 800, 900).await;
    let started = Instant::now();
    loop {
        let local = common::data_files(dir.path());
        let moved = common::data_files(shared.path()).len();
        if local.is_empty() && moved > 0 {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "local data files left: {local:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = read_records(&client, &key, 0..12, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    cluster.shutdown().await.unwrap();
}

/// A real HDFS: Hadoop's MiniDFSCluster (`tests/hdfs/MiniHdfs.java`) in a JVM of its own, its
/// jars copied from Maven; stopped when dropped.
struct MiniHdfs {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for MiniHdfs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mini_hdfs() -> MiniHdfs {
    use std::io::BufRead;
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hdfs");
    let dir = tempfile::tempdir().unwrap();
    let (lib, classes) = (dir.path().join("lib"), dir.path().join("classes"));
    let run = |command: &mut Command, what: &str| {
        let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("mvn")
            .args(["-B", "-q", "-f"])
            .arg(here.join("pom.xml"))
            .arg("dependency:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", lib.display())),
        "copying Hadoop's minicluster jars with mvn (needs Maven and Maven Central)",
    );
    let jars = format!("{}/*", lib.display());
    run(
        Command::new("javac")
            .args(["-cp", &jars, "-d"])
            .arg(&classes)
            .arg(here.join("MiniHdfs.java")),
        "compiling MiniHdfs.java (needs a JDK)",
    );
    let log = std::fs::File::create(dir.path().join("hdfs.log")).unwrap();
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(format!("{}:{jars}", classes.display()))
        .arg("MiniHdfs")
        .arg(dir.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.trim().to_string();
    assert!(
        url.starts_with("hdfs://"),
        "MiniDFSCluster did not start: {url:?} (log: {})",
        std::fs::read_to_string(dir.path().join("hdfs.log")).unwrap_or_default()
    );
    MiniHdfs {
        child,
        url,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_uploads_to_hdfs_and_deleting_the_shuffle_deletes_its_files() {
    let hdfs = tokio::task::spawn_blocking(mini_hdfs).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/sluice", hdfs.url);
    let (cluster, client, key) = drain_with_dfs(dir.path(), &url, "").await;
    assert_eq!(
        files_handed_in(&cluster).await,
        0.0,
        "files were handed over though HDFS was up"
    );
    // The copies are on HDFS: a fresh client of it lists them, and deleting the shuffle
    // deletes them.
    let dfs = sluice_worker::storage::dfs::Dfs::open(&url, "", "").unwrap();
    let listed = |dfs: &sluice_worker::storage::dfs::Dfs| {
        let dfs = dfs.operator().clone();
        async move {
            dfs.list_with("dfs/0/")
                .await
                .map(|entries| {
                    entries
                        .iter()
                        .filter(|e| e.path().ends_with(".data"))
                        .count()
                })
                .unwrap_or(0)
        }
    };
    assert!(listed(&dfs).await > 0, "nothing on HDFS");
    client.unregister_shuffle(&key).await.unwrap();
    let started = Instant::now();
    while listed(&dfs).await > 0 {
        assert!(started.elapsed() < PATIENCE, "files left on HDFS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await.unwrap();
}

/// Two workers on `dfs` whose disks count as full (a reserve larger than any disk here): a
/// shuffle at replication 2 is written straight to the DFS, nothing to the local disks, and
/// every record reads back exactly once.
async fn write_with_full_disks(dfs: &str, endpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(2, dir.path());
    options.worker.dfs = dfs.to_string();
    options.worker.dfs_endpoint = endpoint.to_string();
    options.worker.disk_reserve = bytesize::ByteSize::pib(1);
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 2);
    let key = ShuffleKey::new("dfs-full", 0);
    let ids = write_records(&client, &key, (4, 12), 800, 900).await;
    let seen = read_records(&client, &key, 0..12, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    assert!(
        common::data_files(dir.path()).is_empty(),
        "{:?}",
        common::data_files(dir.path())
    );
    // Both copies of every partition are on the DFS.
    let stored = sluice_worker::storage::dfs::Dfs::open(dfs, endpoint, "us-east-1").unwrap();
    let objects = stored.operator().list_with("dfs-full/0/").await.unwrap();
    let data = objects
        .iter()
        .filter(|e| e.path().ends_with(".data"))
        .count();
    assert!(data >= 24, "{} data objects", data);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_disk_full_shuffles_are_written_to_s3() {
    set_credentials();
    let moto = moto().await;
    let dfs = format!("s3://{BUCKET}/full-{}", std::process::id());
    write_with_full_disks(&dfs, &moto.endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_disk_full_shuffles_are_written_to_hdfs() {
    let hdfs = tokio::task::spawn_blocking(mini_hdfs).await.unwrap();
    write_with_full_disks(&format!("{}/full", hdfs.url), "").await;
}

/// Options for `workers` workers on moto's S3, under `prefix` of the test bucket.
fn s3_options(workers: usize, dir: &Path, moto: &Moto, prefix: &str) -> LocalOptions {
    let mut options = LocalOptions::new(workers, dir);
    options.worker.dfs = format!("s3://{BUCKET}/{prefix}");
    options.worker.dfs_endpoint = moto.endpoint.clone();
    options
}

/// The sum of `name` over every worker's metrics.
async fn worker_metric(cluster: &LocalCluster, workers: std::ops::Range<usize>, name: &str) -> f64 {
    let mut total = 0.0;
    for worker in workers {
        let admin = cluster.worker_admins()[worker].clone().unwrap();
        let (_, text) = common::get(&admin, "/metrics").await;
        total += common::metric_sum(&text, name, "");
    }
    total
}

/// An S3 that stops answering for two seconds while every location is written to it costs
/// time, not data: the uploads hang on the cut link, fail when it comes back, and are retried.
/// At replication 1, so a single lost upload would be a lost record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_s3_outage_costs_time_not_data() {
    set_credentials();
    let moto = moto().await;
    let target = moto.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = chaos::proxy::Proxy::start(Some(target)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(2, dir.path());
    options.worker.dfs = format!("s3://{BUCKET}/blip-{}", std::process::id());
    options.worker.dfs_endpoint = format!("http://{}", proxy.addr());
    options.worker.disk_reserve = bytesize::ByteSize::pib(1);
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("dfs-blip", 0);
    proxy.cut();
    let ids = write_records(&client, &key, (4, 12), 800, 900).await;
    // The commit is under way: its uploads wait on the cut link.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.heal();
    let seen = read_records(&client, &key, 0..12, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    let retries = worker_metric(&cluster, 0..2, "sluice_worker_dfs_retries_total").await;
    let failures = worker_metric(&cluster, 0..2, "sluice_worker_dfs_failures_total").await;
    assert!(retries > 0.0, "no DFS request was retried");
    assert_eq!(failures, 0.0);
    assert!(common::data_files(dir.path()).is_empty());
    cluster.shutdown().await.unwrap();
}

/// S3 goes away for good in the middle of a shuffle at replication 2 whose copies on worker 0
/// are written to S3 (its disk counts as full) and on worker 1 to its disk. Worker 0 gives up
/// on S3 after its retries: its S3 locations fail, writers revive, and worker 0 writes the new
/// locations to its local disk. Every record reads back exactly once, from worker 1's copies of
/// what was written before and from the revived locations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_mid_write_revives_to_a_local_disk() {
    set_credentials();
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("outage-{}", std::process::id());
    let mut options = s3_options(2, dir.path(), &moto, &prefix);
    options.configure_worker = Some(|i, worker| {
        if i == 0 {
            worker.disk_reserve = bytesize::ByteSize::pib(1);
        }
    });
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 2);
    let key = ShuffleKey::new("dfs-outage", 0);
    let (maps, partitions, per_map, max_len) = (4, 3, 8000, 4000);
    let handle = client
        .register_shuffle(&key, maps, partitions)
        .await
        .unwrap();
    // About 11 MB per location: a part of each of worker 0's uploads is on S3 when it goes.
    let mut ids = common::write_maps(&client, &handle, 0..2, partitions, per_map, max_len).await;
    assert!(common::data_files(&cluster.data_dir(0)).is_empty());
    drop(moto);
    // About 16 MB more per location: the next part of each upload fails.
    ids.extend(common::write_maps(&client, &handle, 2..3, partitions, 3 * per_map, max_len).await);
    common::eventually(
        "worker 0 gives up on S3",
        Duration::from_secs(60),
        || async {
            (worker_metric(&cluster, 0..1, "sluice_worker_dfs_failures_total").await > 0.0)
                .then_some(())
        },
    )
    .await;
    ids.extend(common::write_maps(&client, &handle, 3..4, partitions, per_map, max_len).await);
    let seen = read_records(&client, &key, 0..partitions, None)
        .await
        .unwrap();
    common::assert_exactly_once(&ids, &seen);
    assert!(client.metrics().snapshot().revives > 0, "no writer revived");
    assert!(
        !common::data_files(&cluster.data_dir(0)).is_empty(),
        "worker 0 wrote nothing to its local disk"
    );
    cluster.shutdown().await.unwrap();
}

/// A location that grows past `dfs_location_size` moves to S3 as it is written: what its file
/// held is uploaded, the rest goes straight to S3, and its local files are deleted at commit.
/// Every record reads back exactly once, and again from a restarted worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_that_outgrows_its_size_moves_to_s3_as_it_is_written() {
    set_credentials();
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("grown-{}", std::process::id());
    let mut options = s3_options(2, dir.path(), &moto, &prefix);
    options.worker.dfs_location_size = bytesize::ByteSize::mib(4);
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("dfs-grown", 0);
    // About 21 MB per location.
    let ids = write_records(&client, &key, (4, 3), 8000, 4000).await;
    let seen = read_records(&client, &key, 0..3, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    let local = common::data_files(dir.path());
    assert!(local.is_empty(), "local data files left: {local:?}");
    let data = keys(&moto, &format!("{prefix}/dfs-grown/0/"))
        .await
        .into_iter()
        .filter(|k| k.ends_with(".data"))
        .count();
    assert_eq!(data, 3);
    cluster.restart_worker(0).await.unwrap();
    cluster.restart_worker(1).await.unwrap();
    let seen = read_records(&client, &key, 0..3, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    cluster.shutdown().await.unwrap();
}

/// At replication 1, an S3 that goes for good before a shuffle's uploads complete loses what
/// was written to it: the reader is told so (`DataLost`), never given short data. The worker
/// then counts S3 as down, and the next shuffle is written to the local disks though they are
/// below their reserve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_replication_1_a_dead_s3_is_reported_lost_and_new_shuffles_go_to_local_disks() {
    set_credentials();
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("dead-{}", std::process::id());
    let mut options = s3_options(2, dir.path(), &moto, &prefix);
    options.worker.disk_reserve = bytesize::ByteSize::pib(1);
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("dfs-dead", 0);
    let handle = client.register_shuffle(&key, 2, 4).await.unwrap();
    common::write_maps(&client, &handle, 0..1, 4, 800, 900).await;
    drop(moto);
    common::write_maps(&client, &handle, 1..2, 4, 800, 900).await;
    let error = read_records(&client, &key, 0..4, None)
        .await
        .expect_err("records written to a dead S3 cannot be read");
    assert_eq!(
        error.code(),
        sluice_protocol::ErrorCode::DataLost,
        "{error}"
    );
    assert!(worker_metric(&cluster, 0..2, "sluice_worker_dfs_failures_total").await > 0.0);
    assert!(common::data_files(dir.path()).is_empty());

    let next = ShuffleKey::new("dfs-dead", 1);
    let ids = write_records(&client, &next, (2, 4), 800, 900).await;
    let seen = read_records(&client, &next, 0..4, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    assert!(!common::data_files(dir.path()).is_empty());
    cluster.shutdown().await.unwrap();
}

/// Each location written to S3 holds up to a part (8 MiB) of pushed data in the memory budget
/// until the part is sent. With a 32 MiB budget and disks below their reserve, a worker writes
/// two locations to S3 at a time and the rest to its disk. Six locations of 8 MB each written
/// to S3 at once would hold 48 MB that no flush can free, and the writers would wait forever
/// (they do, without the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_written_to_s3_hold_at_most_half_the_memory_budget() {
    set_credentials();
    let moto = moto().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("budget-{}", std::process::id());
    let mut options = s3_options(2, dir.path(), &moto, &prefix);
    options.worker.disk_reserve = bytesize::ByteSize::pib(1);
    options.worker.memory_budget = bytesize::ByteSize::mib(32);
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 1);
    let key = ShuffleKey::new("dfs-budget", 0);
    // About 8 MB per location, 12 locations over 2 workers.
    let written = tokio::time::timeout(
        Duration::from_secs(60),
        write_records(&client, &key, (4, 12), 18000, 4000),
    )
    .await;
    let Ok(ids) = written else {
        let used = worker_metric(&cluster, 0..2, "sluice_worker_memory_used_bytes").await;
        panic!("the writers waited on memory held by S3 uploads ({used} bytes in use)");
    };
    let seen = read_records(&client, &key, 0..12, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    // The locations written to the disk move to S3 once committed (the disk is below its
    // reserve), at a worker's next check of its disks.
    let started = Instant::now();
    while worker_metric(&cluster, 0..2, "sluice_worker_dfs_offloaded_bytes_total").await == 0.0 {
        assert!(
            started.elapsed() < PATIENCE,
            "no location was written to the disk and moved to S3 after its commit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await.unwrap();
}

/// An application that stops sending heartbeats expires, and leaves nothing behind: neither
/// the objects of its locations written to the DFS nor their local records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_application_leaves_nothing_on_the_dfs() {
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(2, dir.path());
    options.worker.dfs = format!("fs://{}", shared.path().display());
    options.worker.disk_reserve = bytesize::ByteSize::pib(1);
    options.master.app_timeout = Duration::from_secs(2);
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 2);
    let key = ShuffleKey::new("dfs-expiring", 0);
    let ids = write_records(&client, &key, (2, 6), 400, 900).await;
    let seen = read_records(&client, &key, 0..6, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    let objects = shared.path().join("dfs-expiring");
    assert!(objects.exists());
    let started = Instant::now();
    while objects.exists() || (0..2).any(|w| cluster.data_dir(w).join("dfs-expiring").exists()) {
        assert!(
            started.elapsed() < PATIENCE,
            "the expired application's data is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await.unwrap();
}

/// With a `dfs_location_size` below one flush, every location moves to the DFS at its first
/// flush, before it has a local file: nothing reaches the disks, every record reads back once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_larger_than_its_size_at_its_first_flush_never_touches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(2, dir.path());
    options.worker.dfs = format!("fs://{}", shared.path().display());
    options.worker.dfs_location_size = bytesize::ByteSize::b(1);
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = common::client(&cluster, 2);
    let key = ShuffleKey::new("dfs-first-flush", 0);
    let ids = write_records(&client, &key, (4, 12), 800, 900).await;
    let seen = read_records(&client, &key, 0..12, None).await.unwrap();
    common::assert_exactly_once(&ids, &seen);
    assert!(common::data_files(dir.path()).is_empty());
    assert_eq!(common::data_files(shared.path()).len(), 24);
    cluster.shutdown().await.unwrap();
}
