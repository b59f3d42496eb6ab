#!/usr/bin/env bash
# The Spark shuffle benchmark (`make bench-spark`): Spark's built-in shuffle against a local
# Sluice cluster on the same jobs, alternating, several rounds; see benches/spark/bench.py.
#
#   bash benches/spark/run.sh [bench.py flags: --rows N --rounds N --jobs heavy,small ...]
#
# Builds the release binary and the jar, and installs pyspark into .venv/ (demo/spark-env.sh),
# unless SKIP_BUILD=1. SPARK_LINE=4.3 runs it on another Spark line. Results and logs go to
# target/bench-spark/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
log() { printf '[bench-spark] %s\n' "$*" >&2; }
# shellcheck source=demo/spark-env.sh
source "$ROOT/demo/spark-env.sh"

exec "$VENV/bin/python" "$ROOT/benches/spark/bench.py" --sluice "$SLUICE" --jar "$JAR" \
  --spark-submit "$VENV/bin/spark-submit" --work "$ROOT/target/bench-spark" \
  "${SPARK_LINE_CONF[@]}" "$@"
