# Sourced by demo/run.sh and benches/spark/run.sh: the Python environment with pyspark
# (demo/pyspark-env.sh), the release `sluice` binary and the Spark client jar of one Spark line.
# Sets VENV, SPARK_HOME, SLUICE, JAR and SPARK_LINE_CONF (what spark-submit needs on that line),
# and exports what spark-submit needs. Needs ROOT (the repository) and a `log` function.
#
#   SPARK_LINE=3.5   the Spark line (3.1 ... 4.3)
#   SKIP_BUILD=1     use the binary and jar already built
#   SLUICE_CARGO_DIR=release
#                    where the sluice binary is (`make test` builds a debug one: debug)
SLUICE=$ROOT/target/${SLUICE_CARGO_DIR:-release}/sluice
# shellcheck source=demo/pyspark-env.sh
source "$ROOT/demo/pyspark-env.sh"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  # The parent module's cargo run builds the sluice binary with the native library.
  log "building the sluice binary and the Spark client jar"
  [ "$SPARK_LINE" != 4.3 ] || bash "$ROOT/client-jvm/spark-4.3/fetch-jars.sh"
  mvn -B -f "$ROOT/client-jvm" -q -DskipTests -pl "spark-$SPARK_LINE" -am package
fi
JAR=$(find "$ROOT/client-jvm/spark-$SPARK_LINE/target" -maxdepth 1 -name "sluice-spark-${SPARK_LINE}_*.jar" \
  ! -name '*-sources.jar' ! -name '*-javadoc.jar' ! -name 'original-*' 2>/dev/null | sort | head -n 1)
[ -n "$JAR" ] || { log "no sluice-spark-${SPARK_LINE} jar in client-jvm/spark-$SPARK_LINE/target (build it: make jars)"; exit 1; }
[ -x "$SLUICE" ] || { log "no $SLUICE (build it: cargo build --release -p sluice)"; exit 1; }
