# The pyspark of one Spark line, for spark-submit: a venv per line with the pyspark release that
# line's jar is built against, the Python it needs, and the spark-submit options the line needs
# on Java 17. Sourced by demo/spark-env.sh (needs ROOT and a `log` function); sets
# PYSPARK_VERSION, VENV, SPARK_HOME and SPARK_LINE_CONF (spark-submit `--conf key=value` pairs)
# and exports what spark-submit needs.
#
#   SPARK_LINE=3.5              the Spark line (3.1 ... 4.3)
#   bash demo/pyspark-env.sh 3.1 4.3
#                               only creates those lines' venvs (CI does it ahead of the tests)
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  # Each line in a shell of its own, which sources this file (a fresh SPARK_LINE, VENV, ...).
  for line in "$@"; do
    SPARK_LINE=$line bash -c 'set -euo pipefail; ROOT=$1; log() { printf "[pyspark-env] %s\n" "$*" >&2; }; source "$ROOT/demo/pyspark-env.sh"; log "$SPARK_LINE: pyspark $PYSPARK_VERSION in $VENV"' _ "$ROOT"
  done
  exit 0
fi

SPARK_LINE=${SPARK_LINE:-3.5}
case $SPARK_LINE in
  3.1) PYSPARK_VERSION=3.1.3 ;;
  3.2) PYSPARK_VERSION=3.2.4 ;;
  3.3) PYSPARK_VERSION=3.3.4 ;;
  3.4) PYSPARK_VERSION=3.4.4 ;;
  3.5) PYSPARK_VERSION=3.5.6 ;;
  4.0) PYSPARK_VERSION=4.0.1 ;;
  4.1) PYSPARK_VERSION=4.1.3 ;;
  4.2) PYSPARK_VERSION=4.2.0 ;;
  4.3) PYSPARK_VERSION=4.3.0 ;;
  *) log "SPARK_LINE=$SPARK_LINE is not a supported Spark line (3.1 ... 4.3)"; exit 1 ;;
esac
# The default line keeps the venv it always had.
if [ "$SPARK_LINE" = 3.5 ]; then VENV=$ROOT/.venv; else VENV=$ROOT/.venv-spark-$SPARK_LINE; fi

# pyspark before 3.4 cannot pickle Python functions on Python 3.11 (its bundled cloudpickle
# predates it): those lines get the newest Python they support, from pyenv's versions or PATH.
PYTHON=python3
case $SPARK_LINE in
  3.1 | 3.2) WANT=3.9 ;;
  3.3) WANT=3.10 ;;
  *) WANT= ;;
esac
if [ -n "$WANT" ]; then
  PYTHON=
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$WANT".*/bin/python"$WANT" "python$WANT"; do
    # (a pyenv shim on PATH answers command -v but may not run: ask it for its version)
    if "$candidate" --version >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
  [ -n "$PYTHON" ] || { log "pyspark $PYSPARK_VERSION needs Python $WANT (not 3.11+) for Python functions; none found on PATH or in pyenv"; exit 1; }
fi

pyspark_ready() {
  "$VENV/bin/python" -c "import sys, pyspark; sys.exit(pyspark.__version__ != '$PYSPARK_VERSION')" 2>/dev/null
}
if ! pyspark_ready; then
  # One creator at a time (CI prepares venvs in the background while other tests run).
  mkdir -p "$ROOT/target"
  exec 9>"$ROOT/target/.venv-spark-$SPARK_LINE.lock"
  flock 9
  if ! pyspark_ready; then
    log "creating $VENV with pyspark==$PYSPARK_VERSION ($("$PYTHON" --version 2>&1))"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # client-jvm/spark-4.3/fetch-jars.sh keeps the 4.3 package it fetched: no second download.
    SDIST=${SLUICE_CACHE:-$HOME/.cache/sluice}/spark-$PYSPARK_VERSION/pyspark-$PYSPARK_VERSION.tar.gz
    if [ -f "$SDIST" ]; then PACKAGE=$SDIST; else PACKAGE=pyspark==$PYSPARK_VERSION; fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$PACKAGE"
  fi
  flock -u 9
  exec 9>&-
fi
export PYSPARK_PYTHON=$VENV/bin/python
SPARK_HOME=$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME
export PYSPARK_DRIVER_PYTHON=$VENV/bin/python
export SPARK_LOCAL_IP=127.0.0.1
command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] || { log "java is required (JDK 17)"; exit 1; }

SPARK_LINE_CONF=()
# Spark 3.1 and 3.2 predate Java 17: their launcher does not open the JDK packages Spark reaches
# into (3.3 on does), so these options do it, the same list Spark's own launcher passes.
if [ "$SPARK_LINE" = 3.1 ] || [ "$SPARK_LINE" = 3.2 ]; then
  OPENS="-XX:+IgnoreUnrecognizedVMOptions"
  for p in java.lang java.lang.invoke java.lang.reflect java.io java.net java.nio java.util \
    java.util.concurrent java.util.concurrent.atomic sun.nio.ch sun.nio.cs sun.security.action \
    sun.util.calendar; do
    OPENS="$OPENS --add-opens=java.base/$p=ALL-UNNAMED"
  done
  SPARK_LINE_CONF+=(--conf "spark.driver.extraJavaOptions=$OPENS"
    --conf "spark.executor.extraJavaOptions=$OPENS")
fi
# Spark 3.1 also ships Scala 2.12.10, whose closures fail to deserialize on Java 17 ("too many
# arguments"); Scala 2.12.15's library (binary compatible) goes in front of it.
if [ "$SPARK_LINE" = 3.1 ]; then
  SCALA_LIB=$HOME/.m2/repository/org/scala-lang/scala-library/2.12.15/scala-library-2.12.15.jar
  [ -f "$SCALA_LIB" ] || mvn -B -q dependency:get -Dartifact=org.scala-lang:scala-library:2.12.15
  SPARK_LINE_CONF+=(--conf "spark.driver.extraClassPath=$SCALA_LIB"
    --conf "spark.executor.extraClassPath=$SCALA_LIB")
fi
