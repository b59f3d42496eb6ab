//! The master's status page in a real browser: headless Chromium loads it from a local cluster
//! with a shuffle running under load, the rendered DOM must show both workers and the running
//! shuffle, and a screenshot is kept as a test artifact (`target/test-artifacts/status-page.png`).
//!
//! Needs Debian's `chromium` at /usr/bin/chromium; set `SLUICE_SKIP_BROWSER_TESTS=1` to skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{api_ok, eventually, find, spawn_slow_writer};
use serde_json::json;
use sluice::local::{LocalCluster, LocalOptions};
use sluice_protocol::ShuffleKey;
use tokio_util::sync::CancellationToken;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest one browser run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether the browser is there; without it the test fails with how to install it, unless
/// skipping was asked for.
fn browser_present() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var("SLUICE_SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!(
            "skipping the status page browser test: {CHROMIUM} is missing and \
             SLUICE_SKIP_BROWSER_TESTS=1"
        );
        return false;
    }
    panic!(
        "{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`) to run \
         the status page browser test, or set SLUICE_SKIP_BROWSER_TESTS=1 to skip it"
    );
}

/// Runs headless Chromium on `url` with `extra` arguments; its stdout. Killed after
/// [`BROWSER_TIMEOUT`].
fn chromium(profile: &Path, url: &str, extra: &[&str]) -> String {
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {extra:?} failed: {status}");
            break;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {extra:?} did not finish within {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// `target/test-artifacts`, created.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_workers_and_a_running_shuffle_in_a_browser() {
    if !browser_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let url = cluster.status_page().expect("the master has an admin port");
    let admin = cluster.master_admins[0].clone();

    // One map ended, one writing slowly: the shuffle stays running under load.
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("status-page-app", 1);
    let handle = client.register_shuffle(&key, 4, 8).await.unwrap();
    let mut first = client.writer(handle.clone(), 0, 0).unwrap();
    for partition in 0..8 {
        first.write(partition, &[7u8; 3000]).await.unwrap();
    }
    first.finish().await.unwrap();
    let stop = CancellationToken::new();
    let slow = spawn_slow_writer(&client, handle.clone(), 1, stop.clone());
    eventually(
        "both workers holding partitions",
        Duration::from_secs(20),
        || async {
            let workers = api_ok(&admin, "/api/workers").await;
            let held = ["worker-0", "worker-1"].iter().all(|id| {
                find(&workers, "workers", "id", &json!(id))
                    .is_some_and(|w| w["partitions"].as_u64() > Some(0))
            });
            held.then_some(())
        },
    )
    .await;

    let profile = tempfile::tempdir().unwrap();
    let page = url.clone();
    let dom = {
        let profile = profile.path().to_path_buf();
        tokio::task::spawn_blocking(move || chromium(&profile, &page, &["--dump-dom"]))
            .await
            .unwrap()
    };
    for id in ["worker-0", "worker-1"] {
        let row = format!(r#"<tr class="worker" data-id="{id}" data-state="active">"#);
        assert!(
            dom.contains(&row),
            "no row for {id} in the rendered page:\n{dom}"
        );
    }
    let shuffle =
        r#"<tr class="shuffle" data-app="status-page-app" data-shuffle="1" data-state="running">"#;
    assert!(
        dom.contains(shuffle),
        "no running shuffle row in the rendered page:\n{dom}"
    );
    assert!(
        dom.contains(r#"class="event""#),
        "no events in the rendered page:\n{dom}"
    );
    // The error banner stays empty.
    assert!(
        dom.contains(r#"role="alert"></div>"#),
        "the page failed to refresh:\n{dom}"
    );

    let screenshot = artifacts().join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    {
        let profile = profile.path().to_path_buf();
        let shot = format!("--screenshot={}", screenshot.display());
        tokio::task::spawn_blocking(move || {
            chromium(&profile, &url, &[&shot, "--window-size=1400,1000"])
        })
        .await
        .unwrap();
    }
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a {} byte screenshot is blank",
        png.len()
    );
    println!("status page screenshot: {}", screenshot.display());

    stop.cancel();
    slow.await.unwrap();
    cluster.shutdown().await.unwrap();
}
