#!/usr/bin/env bash
# Spark 4.3.0 for the spark-4.3 module. It is not on the Maven repository this project builds
# from, but PyPI has it: the pyspark 4.3.0 package ships every jar Spark runs with. This script
# downloads the package once (kept in ~/.cache/sluice/spark-4.3.0, where demo/spark-env.sh also
# installs pyspark from), and writes pom.xml from pom.xml.in with one system-scope dependency per
# jar, so the module compiles and runs its tests against exactly what spark-submit runs.
#
#   client-jvm/spark-4.3/fetch-jars.sh     (`make jars` runs it; safe to run again)
set -euo pipefail

VERSION=4.3.0
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}/spark-$VERSION
SDIST=$CACHE/pyspark-$VERSION.tar.gz

mkdir -p "$CACHE"
# One fetcher at a time (CI fetches ahead in the background while other tests run).
exec 9>"$CACHE.lock"
flock 9
if [ ! -f "$CACHE/jars/spark-core_2.13-$VERSION.jar" ]; then
  if [ ! -f "$SDIST" ]; then
    echo "fetching pyspark $VERSION from PyPI (about 450 MB)" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
      "pyspark==$VERSION" -d "$CACHE.tmp"
    mv "$CACHE.tmp/pyspark-$VERSION.tar.gz" "$SDIST"
    rm -rf "$CACHE.tmp"
  fi
  rm -rf "$CACHE/jars" "$CACHE/unpack"
  mkdir -p "$CACHE/unpack"
  tar -xzf "$SDIST" -C "$CACHE/unpack" "pyspark-$VERSION/deps/jars"
  mv "$CACHE/unpack/pyspark-$VERSION/deps/jars" "$CACHE/jars"
  rm -rf "$CACHE/unpack"
fi

python3 - "$VERSION" "$CACHE/jars" "$HERE/pom.xml.in" "$HERE/pom.xml" <<'PY'
import os, sys
version, jars, template, out = sys.argv[1:]
deps = []
for name in sorted(os.listdir(jars)):
    if not name.endswith(".jar"):
        continue
    stem = name[: -len(".jar")]
    # Spark's own two keep their real coordinates: they replace the parent's spark-core and
    # spark-sql dependencies. Every other jar gets a name of its own under one group.
    if stem in (f"spark-core_2.13-{version}", f"spark-sql_2.13-{version}"):
        group, artifact = "org.apache.spark", stem[: -len(f"-{version}")]
    else:
        group, artifact = f"pyspark-{version}-jars", stem
    deps.append(
        "    <dependency>\n"
        f"      <groupId>{group}</groupId>\n"
        f"      <artifactId>{artifact}</artifactId>\n"
        f"      <version>{version}</version>\n"
        "      <scope>system</scope>\n"
        f"      <systemPath>{os.path.join(jars, name)}</systemPath>\n"
        "    </dependency>"
    )
text = open(template).read().replace("@JARS@", "\n".join(deps))
tmp = out + ".tmp"
with open(tmp, "w") as f:
    f.write(text)
os.replace(tmp, out)
print(f"{out}: {len(deps)} jars of Spark {version} from {jars}", file=sys.stderr)
PY
