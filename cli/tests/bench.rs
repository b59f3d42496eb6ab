//! `sluice bench` on its own cluster (child processes): the report carries the codec, what LZ4
//! (and zstd, when the client uses it) alone does, push latency percentiles, CPU seconds per GB of the client and the workers, and
//! the workers' memory over the run. Only that the figures are there and consistent is checked,
//! never a threshold: they depend on the machine.

fn bench(extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "--maps",
            "2",
            "--partitions",
            "8",
            "--bytes-per-map",
            "1MiB",
            "--verify",
            "--loopback-bytes",
            "0",
            "--lz4-bytes",
            "4MiB",
            "--settle",
            "0s",
        ])
        .args(extra)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("worker rss MiB"), "{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn number(report: &serde_json::Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

#[test]
fn the_bench_reports_codec_latency_cpu_and_worker_memory() {
    let mut pushed = std::collections::HashMap::new();
    for (codec, extra) in [
        ("lz4", &[][..]),
        ("none", &["--compression", "none"][..]),
        ("zstd", &["--compression", "zstd"][..]),
    ] {
        let report = bench(extra);
        pushed.insert(codec, number(&report["client_metrics"], "push_bytes"));
        assert_eq!(report["compression"], codec, "{report}");
        assert_eq!(
            (report["lost"].as_u64(), report["duplicated"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(number(&report["lz4"], "compress_gbps") > 0.0, "{report}");
        assert!(number(&report["lz4"], "decompress_gbps") > 0.0, "{report}");
        if codec == "lz4" {
            assert!(number(&report, "write_of_lz4") > 0.0, "{report}");
        } else {
            assert!(report["write_of_lz4"].is_null(), "{report}");
        }
        if codec == "zstd" {
            assert!(number(&report["zstd"], "compress_gbps") > 0.0, "{report}");
            assert!(number(&report, "write_of_zstd") > 0.0, "{report}");
            assert!(
                number(&report["zstd"], "ratio") < number(&report["lz4"], "ratio"),
                "{report}"
            );
        } else {
            assert!(report.get("zstd").is_none(), "{report}");
        }
        assert!(number(&report, "pushes") >= 1.0, "{report}");
        let (p50, p99) = (
            number(&report, "push_p50_ms"),
            number(&report, "push_p99_ms"),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{report}");
        for who in ["client", "worker"] {
            for phase in ["write_", "read_", ""] {
                let field = format!("{who}_cpu_{phase}secs_per_gb");
                assert!(number(&report, &field) >= 0.0, "{report}");
            }
        }
        let idle = number(&report, "worker_rss_idle_bytes");
        let peak = number(&report, "worker_rss_peak_bytes");
        let deleted = number(&report, "worker_rss_after_delete_bytes");
        let settled = number(&report, "worker_rss_settled_bytes");
        assert!(idle > 0.0 && idle <= peak, "{report}");
        assert!(deleted > 0.0 && deleted <= peak, "{report}");
        assert!(settled > 0.0 && settled <= peak, "{report}");
        assert_eq!(number(&report, "settle_secs"), 0.0);
    }
    // The same records, verified as read back each time, took fewer bytes with each codec.
    assert!(
        pushed["zstd"] < pushed["lz4"] && pushed["lz4"] < pushed["none"],
        "{pushed:?}"
    );
}
