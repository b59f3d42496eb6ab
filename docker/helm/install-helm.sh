#!/usr/bin/env bash
# Installs helm from the Go module proxy (no release download needed) into target/tools/bin,
# once: later runs find it there. Prints the helm binary's path.
#
#   docker/helm/install-helm.sh         (needs Go 1.24 or later; about 4 minutes on 2 cores)
set -euo pipefail

# The newest helm 3 the module proxy served when the chart was written.
version=v3.22.0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$root/target/tools/bin
# `go version -m` reads the module version built into the binary (helm's own `version` prints
# only major.minor when built this way).
if [[ -x $bin/helm ]] && go version -m "$bin/helm" 2>/dev/null | grep -q "^[[:space:]]mod[[:space:]]*helm.sh/helm/v3[[:space:]]*${version}[[:space:]]"; then
    echo "$bin/helm"
    exit 0
fi
command -v go >/dev/null || { echo "install-helm: go not found (Go 1.24 or later)" >&2; exit 1; }
mkdir -p "$bin"
echo "install-helm: go install helm.sh/helm/v3/cmd/helm@$version into $bin" >&2
GOBIN=$bin GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$version"
echo "$bin/helm"
