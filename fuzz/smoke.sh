#!/usr/bin/env bash
# Builds every fuzz target and runs each one briefly from its committed seeds: a smoke test
# that the targets build, the seeds are valid, and no shallow crash is back.
#
#   fuzz/smoke.sh              # 20000 executions per target
#   RUNS=200000 fuzz/smoke.sh  # longer
#
# Needs the nightly toolchain; installs cargo-fuzz from crates.io when it is missing. Exits
# non-zero on the first crash (the input is left in fuzz/artifacts/<target>/).
set -euo pipefail

cd "$(dirname "$0")"
runs="${RUNS:-20000}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Release build with overflow checks and debug assertions on, under AddressSanitizer.
build=(-O -a)
started=$SECONDS
cargo +nightly fuzz build "${build[@]}"
echo "smoke: built in $((SECONDS - started))s"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
    target_started=$SECONDS
    mkdir -p "$scratch/$target"
    # New inputs go to the scratch corpus; the committed seeds are only read.
    if ! cargo +nightly fuzz run "${build[@]}" "$target" "$scratch/$target" "seeds/$target" -- \
        -runs="$runs" -print_final_stats=1 >"$scratch/$target.log" 2>&1; then
        cat "$scratch/$target.log" >&2
        echo "smoke: $target FAILED" >&2
        exit 1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$target.log" | grep -o '[0-9]*$')
    echo "smoke: $target ok, ${execs:-?} executions in $((SECONDS - target_started))s"
done
echo "smoke: all targets ok in $((SECONDS - started))s"
