# Sourced by demo/run.sh and benches/spark/run.sh: the Python environment with pyspark, the
# release `sluice` binary and the Spark client jar. Sets VENV, SPARK_HOME, SLUICE and JAR, and
# exports what spark-submit needs. Needs ROOT (the repository) and a `log` function.
#
#   SKIP_BUILD=1   use the binary and jar already built
PYSPARK_VERSION=3.5.6 # the Spark version of client-jvm/pom.xml
VENV=$ROOT/.venv
SLUICE=$ROOT/target/release/sluice

if ! "$VENV/bin/python" -c "import sys, pyspark; sys.exit(pyspark.__version__ != '$PYSPARK_VERSION')" 2>/dev/null; then
  log "creating $VENV with pyspark==$PYSPARK_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "pyspark==$PYSPARK_VERSION"
fi
export PYSPARK_PYTHON=$VENV/bin/python
SPARK_HOME=$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME
export PYSPARK_DRIVER_PYTHON=$VENV/bin/python
export SPARK_LOCAL_IP=127.0.0.1
command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] || { log "java is required (JDK 17)"; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building the sluice binary and the Spark client jar"
  cargo build --release --quiet -p sluice
  mvn -B -f "$ROOT/client-jvm" -q -DskipTests package
fi
JAR=$(find "$ROOT/client-jvm/target" -maxdepth 1 -name 'sluice-spark-*.jar' \
  ! -name '*-sources.jar' ! -name '*-javadoc.jar' ! -name 'original-*' | sort | head -n 1)
[ -n "$JAR" ] || { log "no sluice-spark jar in client-jvm/target (build it: mvn -f client-jvm -DskipTests package)"; exit 1; }
[ -x "$SLUICE" ] || { log "no $SLUICE (build it: cargo build --release -p sluice)"; exit 1; }
