# Sluice: the commands README.md names.
.PHONY: bench test lint

# The main job: a verified benchmark on an embedded 3-worker cluster (release build).
bench:
	cargo run --release -p sluice -- bench --workers 3 --maps 8 --partitions 64 --bytes-per-map 64MiB --verify

# Every test: formatting, lints, then all workspace tests.
test: lint
	cargo test --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
