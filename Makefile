# Sluice: the commands README.md names.
.PHONY: demo local bench chaos test test-rust test-jvm test-demo lint

# The main job: a local Sluice cluster serving a real PySpark job, checked against Spark's own
# shuffle (builds the binary and the jar; creates .venv with pyspark on first use).
demo:
	bash demo/run.sh

# A local cluster (one master, two workers) with its status page; prints the page's URL and
# runs until Ctrl-C.
local:
	cargo build --release -p sluice
	rm -rf /tmp/sluice-local
	./target/release/sluice local --workers 2 --data-dir /tmp/sluice-local

# A verified benchmark on an embedded 3-worker cluster (release build).
bench:
	cargo run --release -p sluice -- bench --workers 3 --maps 8 --partitions 64 --bytes-per-map 64MiB --verify

# Fault injection with real processes: every scenario, table and JSON report.
chaos:
	cargo build -p sluice
	cargo run -p chaos -- --all

# Every test: formatting and lints, the Rust tests, the Spark (JUnit) tests, and spark-submit
# from pyspark against the built jar.
test: lint test-rust test-jvm test-demo

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

test-rust:
	cargo test --workspace

test-jvm:
	mvn -B -f client-jvm test

# spark-submit from the pyspark package on PyPI, with the jar from `mvn package`.
test-demo:
	mvn -B -q -f client-jvm -DskipTests package
	DEMO_SKIP_BUILD=1 DEMO_ROWS=500000 bash demo/run.sh
