#!/usr/bin/env bash
# The demo job through spark-submit on several Spark lines (pyspark from PyPI, each with its own
# venv), then the wrong-jar check: spark-submit of each line given the jar of another line must
# stop when the SparkContext starts, not fail later inside a task. The message is Sluice's,
# naming the jar to use; only the 4.3 jar on an older Spark fails before any Sluice code can run
# (its shuffle manager implements an interface older Sparks lack), with the JVM's
# NoClassDefFoundError naming org/apache/spark/shuffle/BlockingShuffleManager.
#
#   bash demo/lines.sh [LINE ...]      (default: the oldest and the newest line, 3.1 4.3)
#
# Environment: DEMO_ROWS (default 300000), SKIP_BUILD=1 to use the jars already built.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { printf '[lines] %s\n' "$*" >&2; }

LINES=("$@")
[ ${#LINES[@]} -gt 0 ] || LINES=(3.1 4.3)
ROWS=${DEMO_ROWS:-300000}

for line in "${LINES[@]}"; do
  log "Spark line $line: the demo job, $ROWS rows"
  SPARK_LINE=$line DEMO_ROWS=$ROWS DEMO_SKIP_BUILD=${SKIP_BUILD:-0} \
    DEMO_WORK=$ROOT/target/demo-spark-$line bash demo/run.sh
done

# The wrong jar: each line's Spark with the jar of the first other line given.
for line in "${LINES[@]}"; do
  other=
  for candidate in "${LINES[@]}"; do
    if [ "$candidate" != "$line" ]; then other=$candidate; break; fi
  done
  [ -n "$other" ] || break
  WRONG=$(find "$ROOT/client-jvm/spark-$other/target" -maxdepth 1 -name "sluice-spark-${other}_*.jar" | head -n 1)
  (
    SPARK_LINE=$line SKIP_BUILD=1
    # shellcheck source=demo/spark-env.sh
    source "$ROOT/demo/spark-env.sh"
    out=$ROOT/target/demo-spark-$line/wrong-jar.log
    log "Spark line $line given $(basename "$WRONG")"
    if "$VENV/bin/spark-submit" --master 'local[1]' "${SPARK_LINE_CONF[@]}" --jars "$WRONG" \
      --conf spark.ui.enabled=false \
      --conf spark.shuffle.manager=org.apache.spark.shuffle.sluice.SluiceShuffleManager \
      --conf spark.sluice.master.endpoints=127.0.0.1:1 \
      demo/job.py --rows 1000 --out /dev/null >"$out" 2>&1; then
      log "spark-submit with the wrong jar succeeded: see $out"
      exit 1
    fi
    if [ "$other" = 4.3 ] && [ "$line" != 4.3 ]; then
      want="NoClassDefFoundError: org/apache/spark/shuffle/BlockingShuffleManager"
    else
      want="is for Spark $other"
    fi
    if ! grep -q "$want" "$out"; then
      log "spark-submit with the wrong jar failed without \"$want\"; the end of $out:"
      tail -n 30 "$out" >&2
      exit 1
    fi
    if grep -q ' in stage ' "$out"; then
      log "the wrong jar was only noticed inside a task: $out"
      exit 1
    fi
    log "refused at start: $(grep -o -m1 "this Sluice jar ([^)]*) is for Spark [^:]*\|$want" "$out" | head -n 1)"
  )
done
log "every line given: ${LINES[*]}"
