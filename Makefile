# Sluice: the commands README.md names.
.PHONY: demo local jars bench bench-spark chaos chaos-secure test test-rust test-jvm test-demo test-ops lint

# The main job: a local Sluice cluster serving a real PySpark job, checked against Spark's own
# shuffle (builds the binary and the jar; creates .venv with pyspark on first use).
demo:
	bash demo/run.sh

# The Spark client jar of every supported Spark line (client-jvm/spark-<line>/target/), with the
# native library; Spark 4.3's jars come from the pyspark 4.3.0 package (fetched once).
jars:
	bash client-jvm/spark-4.3/fetch-jars.sh
	mvn -B -f client-jvm -DskipTests package

# A local cluster (one master, two workers) with its status page; prints the page's URL and
# runs until Ctrl-C.
local:
	cargo build --release -p sluice
	rm -rf /tmp/sluice-local
	./target/release/sluice local --workers 2 --data-dir /tmp/sluice-local

# Spark's built-in shuffle against Sluice on a shuffle-heavy and a small-shuffle job, alternating,
# three rounds (benches/spark/; ROWS=20000000 by default, about 20 minutes on 2 cores).
bench-spark:
	bash benches/spark/run.sh --rows $(or $(ROWS),20000000) --rounds $(or $(ROUNDS),3)

# A verified benchmark on an embedded 3-worker cluster (release build).
bench:
	cargo run --release -p sluice -- bench --workers 3 --maps 8 --partitions 64 --bytes-per-map 64MiB --verify

# Fault injection with real processes: every scenario, table and JSON report.
chaos:
	cargo build -p sluice
	cargo run -p chaos -- --all

# The same with a cluster secret and TLS on every port, every client authenticated.
chaos-secure:
	cargo build -p sluice
	cargo run -p chaos -- --all --secure

# Every test: formatting and lints, the Rust tests (with the status page in headless Chromium
# and the dashboard against a real Prometheus), the Spark (JUnit) tests, spark-submit from
# pyspark against the built jar, and the container image and Helm chart.
test: lint test-rust test-jvm test-demo test-ops

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# The DFS tests run against moto's S3 server (PyPI), installed here when missing.
test-rust:
	command -v moto_server >/dev/null 2>&1 || python3 -m pip install --quiet 'moto[server]'
	cargo test --workspace

# The tests build the native library and the sluice binary with cargo's dev profile (into
# target/debug): it reuses what the Rust tests compiled, where a release build would compile
# everything again, and the Spark tests move megabytes, not gigabytes.
TEST_NATIVE = -Dsluice.cargoProfile=dev -Dsluice.cargoDir=debug

# Every Spark line's JUnit tests: the whole suite on 3.5 and 4.3, the job suite on the others.
# PREFETCH_DONE: CI downloads every line's artifacts in the background while the Rust tests run,
# and writes this file when it is done; Maven starts after that.
test-jvm:
	@if [ -n "$(PREFETCH_DONE)" ]; then while [ ! -s "$(PREFETCH_DONE)" ]; do sleep 2; done; fi
	bash client-jvm/spark-4.3/fetch-jars.sh
	mvn -B -f client-jvm $(TEST_NATIVE) --fail-at-end test

# spark-submit from the pyspark packages on PyPI, with the jars from `mvn package`: the demo on
# the default line (3.5), then on the oldest and the newest line with the wrong-jar check.
# The scripts take the debug sluice binary that $(TEST_NATIVE) built (demo/spark-env.sh).
test-demo: export SLUICE_CARGO_DIR = debug
test-demo:
	bash client-jvm/spark-4.3/fetch-jars.sh
	mvn -B -q -f client-jvm $(TEST_NATIVE) -DskipTests package
	DEMO_SKIP_BUILD=1 DEMO_ROWS=500000 bash demo/run.sh
	SKIP_BUILD=1 DEMO_ROWS=300000 bash demo/lines.sh 3.1 4.3
	# The Spark benchmark's scripts, small: both shuffles must give the same answers.
	SKIP_BUILD=1 bash benches/spark/run.sh --rows 200000 --rounds 1 --stages 3

# The container image (podman: a containerised master and two workers serve a verified bench)
# and the Helm chart (helm lint and template from the Go module proxy's helm, every rendered
# object decoded strictly into its Kubernetes API type, the rendered configs started).
test-ops:
	cargo build -p sluice-jni -p sluice
	SLUICE_BIN=$(CURDIR)/target/debug/sluice bash docker/test-chart.sh
	bash docker/test-image.sh $(CURDIR)/target/debug/sluice
