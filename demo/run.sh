#!/usr/bin/env bash
# Sluice demo (`make demo`): runs demo/job.py with spark-submit twice, once on Spark's own
# shuffle and once through a local Sluice cluster, and requires identical answers.
#
#   bash demo/run.sh
#
# Steps: a project-local venv (.venv/) with pyspark; the sluice binary and the Spark client jar;
# `sluice local --workers 2`; the two runs; the comparison; both wall times. Exits non-zero on
# any difference. Safe to run again: an existing venv with the right pyspark is reused and the
# builds are incremental.
#
# Environment:
#   DEMO_ROWS=3000000     events the job generates
#   DEMO_SKIP_BUILD=1     use the binary and jar already built (CI after `make test`)
#   DEMO_WORK=target/demo where answers and logs go
#   SPARK_LINE=3.5        the Spark line to run on (3.1 ... 4.3; demo/spark-env.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ROWS=${DEMO_ROWS:-3000000}
WORK=${DEMO_WORK:-$ROOT/target/demo}

mkdir -p "$WORK"
log() { printf '[demo] %s\n' "$*" >&2; }

# 1-2. pyspark in a venv, the sluice binary and the jar (which carries the native library).
SKIP_BUILD=${DEMO_SKIP_BUILD:-0}
# shellcheck source=demo/spark-env.sh
source "$ROOT/demo/spark-env.sh"

# 3. A local Sluice cluster; stopped on exit whatever happens.
DATA=$(mktemp -d "${TMPDIR:-/tmp}/sluice-demo.XXXXXX")
cleanup() {
  if [ -n "${SLUICE_PID:-}" ] && kill -0 "$SLUICE_PID" 2>/dev/null; then
    kill -TERM "$SLUICE_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SLUICE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SLUICE_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT
coproc SLUICE_PROC { exec "$SLUICE" local --workers 2 --data-dir "$DATA" 2>"$WORK/sluice.log"; }
SLUICE_PID=$SLUICE_PROC_PID
# The one JSON line it prints when every worker is up.
if ! IFS= read -r -t 60 READY <&"${SLUICE_PROC[0]}"; then
  log "sluice local did not announce itself within 60s; its log:"
  tail -n 30 "$WORK/sluice.log" >&2
  exit 1
fi
MASTER=$(printf '%s' "$READY" | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["master"])')
log "sluice local: master $MASTER (log: $WORK/sluice.log)"

# 4. The same job twice.
SUBMIT=("$VENV/bin/spark-submit" --master 'local[2]' --driver-memory 2g "${SPARK_LINE_CONF[@]}"
  --conf spark.ui.enabled=false
  --conf spark.sql.shuffle.partitions=64)
# local mode: --jars is enough (the driver is the executor). On a real cluster the jar must be
# on the executors' class path when they start (spark.executor.extraClassPath or $SPARK_HOME/jars).
SLUICE_CONF=(--jars "$JAR"
  --conf spark.shuffle.manager=org.apache.spark.shuffle.sluice.SluiceShuffleManager
  --conf spark.shuffle.sort.io.plugin.class=org.apache.spark.shuffle.sluice.SluiceShuffleDataIO
  --conf "spark.sluice.master.endpoints=$MASTER")

run() { # name, extra spark-submit arguments...
  local name=$1
  shift
  local start end
  start=$(date +%s.%N)
  if ! "${SUBMIT[@]}" "$@" demo/job.py --rows "$ROWS" --out "$WORK/answer-$name.json" \
    >"$WORK/$name.out" 2>"$WORK/$name.log"; then
    log "the $name run failed; the end of $WORK/$name.log:"
    tail -n 40 "$WORK/$name.log" >&2
    if [ "$name" = sluice ]; then
      log "the end of $WORK/sluice.log:"
      tail -n 20 "$WORK/sluice.log" >&2
    fi
    exit 1
  fi
  end=$(date +%s.%N)
  eval "TIME_$name=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
  sed "s/^/[$name] /" "$WORK/$name.out" >&2
}

log "Spark $PYSPARK_VERSION (pyspark in $VENV), jar $(basename "$JAR")"
log "run 1/2: Spark's built-in shuffle, $ROWS rows"
run builtin
log "run 2/2: the Sluice shuffle, $ROWS rows"
run sluice "${SLUICE_CONF[@]}"

# 5. Compare.
echo "built-in shuffle: ${TIME_builtin}s wall (spark-submit start to exit)"
echo "sluice shuffle:   ${TIME_sluice}s wall (spark-submit start to exit)"
if cmp -s "$WORK/answer-builtin.json" "$WORK/answer-sluice.json"; then
  echo "answers identical: $(sha256sum "$WORK/answer-sluice.json" | cut -c1-64)"
else
  echo "ANSWERS DIFFER:" >&2
  diff "$WORK/answer-builtin.json" "$WORK/answer-sluice.json" | head -n 40 >&2 || true
  exit 1
fi
