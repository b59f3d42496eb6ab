#!/usr/bin/env bash
# Tests the Helm chart docker/helm/sluice without a Kubernetes cluster:
#   1. `helm lint --strict` with the default values and each ci/*-values.yaml (ha: three
#      masters, single: one, options: every optional branch of the templates);
#   2. `helm template` of each, decoded strictly into the Kubernetes API types and checked by
#      docker/helm/check (selectors, named ports, probes, volumes, ConfigMap keys, Sluice's peer
#      list), with Sluice's TOML keys and types checked against a running master's and worker's
#      /api/config;
#   3. the real binary started on each rendered master.toml and worker.toml (Sluice refuses an
#      unknown key or a bad value, so a misspelled setting fails here): the master must answer
#      /healthz, the worker must register with a master;
#   4. values and manifests that must be refused: a key the chart manages, a schema violation,
#      a misspelled Sluice key, a probe naming an undeclared port, an unknown API field.
# Prints one line per check and "N passed, N failed" last; exits 1 on any failure.
#
#   docker/test-chart.sh
#
# Needs Go 1.24+ (builds the checker; installs helm v3 from the Go module proxy into
# target/tools/bin through docker/helm/install-helm.sh when HELM is unset and none is there),
# curl, and a sluice binary: SLUICE_BIN, else target/release/sluice, else target/debug/sluice.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart=$root/docker/helm/sluice
tools=$root/target/tools/bin

die() {
    echo "test-chart: $*" >&2
    exit 1
}

command -v go >/dev/null || die "go not found (Go 1.24 or later builds docker/helm/check)"
command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
sluice=${SLUICE_BIN:-}
if [[ -z $sluice ]]; then
    for candidate in "$root/target/release/sluice" "$root/target/debug/sluice"; do
        if [[ -x $candidate ]]; then
            sluice=$candidate
            break
        fi
    done
fi
[[ -n $sluice && -x $sluice ]] || die "no sluice binary: set SLUICE_BIN or cargo build -p sluice"
helm=${HELM:-}
if [[ -z $helm ]]; then
    helm=$("$root/docker/helm/install-helm.sh")
fi
"$helm" version --short >/dev/null || die "$helm does not run"

work=$(mktemp -d /tmp/sluice-chart-test.XXXXXX)
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT INT TERM

passed=0
failed=0
pass() {
    passed=$((passed + 1))
    echo "ok   $*"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL $*"
}

started=$(date +%s)
echo "test-chart: $("$helm" version --short), $("$sluice" --version), go $(go env GOVERSION)"
mkdir -p "$tools"
(cd "$root/docker/helm/check" && go build -o "$tools/sluice-chart-check" .) || die "building docker/helm/check failed"
check=$tools/sluice-chart-check

# Starts a process in the background and waits for its first stdout line, its ready JSON:
# sets `ready` to that line and `pid` to the process. Not to be called in $(...): the process
# must stay this shell's child, for cleanup.
#   start NAME COMMAND...
start() {
    local name=$1 out=$work/$1.out err=$work/$1.err deadline=$((SECONDS + 30))
    shift
    "$@" >"$out" 2>"$err" &
    pid=$!
    pids+=("$pid")
    until grep -q '^{' "$out" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "--- $name stderr:" >&2
            tail -20 "$err" >&2
            return 1
        fi
        sleep 0.1
    done
    ready=$(grep -m1 '^{' "$out")
}
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
field() { sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p" <<<"$1"; }

# The config keys, from a running master and worker: their /api/config.
start keys-master "$sluice" master --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --data-dir "$work/keys-master" || die "sluice master does not start"
master=$(field "$ready" master)
curl -fsS "http://$(field "$ready" admin)/api/config" >"$work/master-keys.json"
start keys-worker "$sluice" worker --master "$master" --host 127.0.0.1 --id keys-worker \
    --push-listen 127.0.0.1:0 --fetch-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --data-dirs "$work/keys-worker" || die "sluice worker does not start"
curl -fsS "http://$(field "$ready" admin)/api/config" >"$work/worker-keys.json"
stop "$pid"
echo "test-chart: config keys from a running master ($(grep -o '"[a-z_]*":' "$work/master-keys.json" | wc -l)) and worker ($(grep -o '"[a-z_]*":' "$work/worker-keys.json" | wc -l))"

# helm built by `go install` assumes Kubernetes 1.20 (its version is set only in release
# builds); the chart needs 1.23 or later.
kube=${KUBE_VERSION:-1.30.0}
template=("$helm" template sluice "$chart" --namespace sluice --kube-version "$kube")
checker=("$check" -master-keys "$work/master-keys.json" -worker-keys "$work/worker-keys.json"
    -want "StatefulSet,Service,ConfigMap,PodDisruptionBudget")

# Runs the master on a rendered master.toml: it must start and answer /healthz; sets `result`.
# A Raft group's config takes the id from the host name, so the master runs in its own UTS
# namespace named as the StatefulSet names the pod (unshare, as root), else with --id.
run_master() {
    local name=$1 dir=$2 ordinal=$3 admin
    local run=("$sluice" master --config "$dir/master.toml" --listen 127.0.0.1:0
        --admin-listen 127.0.0.1:0 --data-dir "$work/$name-data")
    local how="id from --id $ordinal"
    if grep -q '^id = "auto"' "$dir/master.toml"; then
        if [[ $(id -u) -eq 0 ]] && command -v unshare >/dev/null && command -v hostname >/dev/null && unshare --uts true 2>/dev/null; then
            run=(unshare --uts sh -c "hostname sluice-master-$ordinal && exec \"\$@\"" sh "${run[@]}")
            how="id from the host name sluice-master-$ordinal"
        else
            run+=(--id "$ordinal")
        fi
    else
        how="single master"
    fi
    start "$name" "${run[@]}" || return 1
    admin=$(field "$ready" admin)
    result=$(curl -fsS "http://$admin/healthz") || return 1
    curl -fsS "http://$admin/api/config" >"$work/$name-config.json" || return 1
    kill -0 "$pid" || return 1
    stop "$pid"
    result="$how; /healthz: $result"
}

# Runs a worker on a rendered worker.toml with the environment the StatefulSet gives it,
# against the keys master: it must register; sets `result`.
run_worker() {
    local name=$1 dir=$2 dirs=() count i joined
    count=$(sed -n 's/^data_dirs = \[\(.*\)\]$/\1/p' "$dir/worker.toml" | tr ',' '\n' | grep -c .)
    for ((i = 0; i < count; i++)); do dirs+=("$work/$name-disk-$i"); done
    joined=$(
        IFS=,
        echo "${dirs[*]}"
    )
    start "$name" env SLUICE_WORKER_ID="$name" SLUICE_WORKER_HOST=127.0.0.1 \
        SLUICE_WORKER_NODE=node-0 "$sluice" worker --config "$dir/worker.toml" --master "$master" \
        --push-listen 127.0.0.1:0 --fetch-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --data-dirs "$joined" || return 1
    stop "$pid"
    result="$count disk(s), registered as $(field "$ready" id)"
}

for values in default "$chart"/ci/*-values.yaml; do
    name=$(basename "$values" .yaml)
    args=()
    [[ $values == default ]] || args=(-f "$values")
    out=$work/$name
    mkdir -p "$out"

    if "$helm" lint --strict --kube-version "$kube" "$chart" "${args[@]}" >"$out/lint.txt" 2>&1; then
        pass "$name: helm lint --strict"
    else
        fail "$name: helm lint --strict"
        cat "$out/lint.txt"
    fi
    if ! "${template[@]}" "${args[@]}" >"$out/rendered.yaml" 2>"$out/template.err"; then
        fail "$name: helm template"
        cat "$out/template.err"
        continue
    fi
    pass "$name: helm template ($(grep -c '^kind:' "$out/rendered.yaml") objects)"
    if "${checker[@]}" -extract "$out" <"$out/rendered.yaml" >"$out/check.txt" 2>&1; then
        pass "$name: API types and semantics ($(tail -1 "$out/check.txt"))"
    else
        fail "$name: API types and semantics"
        grep -v '^decoded' "$out/check.txt"
    fi
    ordinal=0
    grep -q '^id = "auto"' "$out/master.toml" 2>/dev/null && ordinal=1
    if run_master "$name-master" "$out" "$ordinal"; then
        pass "$name: sluice master starts on the rendered master.toml ($result)"
    else
        fail "$name: sluice master on the rendered master.toml"
        cat "$out/master.toml"
        tail -5 "$work/$name-master.err" 2>/dev/null || true
    fi
    if run_worker "$name-worker" "$out"; then
        pass "$name: sluice worker starts on the rendered worker.toml ($result)"
    else
        fail "$name: sluice worker on the rendered worker.toml"
        cat "$out/worker.toml"
        tail -5 "$work/$name-worker.err" 2>/dev/null || true
    fi
done

# Must be refused: by the chart, by the schema, by the checker, by the binary.
refused() {
    local what=$1
    shift
    if "$@" >"$work/refused.out" 2>&1; then
        fail "$what: accepted"
    else
        pass "$what: refused ($(grep -m1 '^Error\|^- at\|^FAIL\|^check:' "$work/refused.out" | head -c 150))"
    fi
}
refused "a key the chart manages (master.config.listen)" \
    "${template[@]}" --set master.config.listen=0.0.0.0:1
refused "a master count the schema refuses (master.replicas=2)" \
    "${template[@]}" --set master.replicas=2
refused "a value the schema does not know (worker.disk)" \
    "${template[@]}" --set worker.disk=x
"${template[@]}" --set worker.config.memroy_budget=1GiB >"$work/typo.yaml"
refused "a misspelled Sluice key (worker.config.memroy_budget)" "${checker[@]}" <"$work/typo.yaml"
"${template[@]}" --set worker.config.heartbeat_interval=3 >"$work/number.yaml"
refused "a number where Sluice wants a duration (heartbeat_interval=3)" "${checker[@]}" <"$work/number.yaml"
sed 's/port: admin$/port: admni/' "$work/default/rendered.yaml" >"$work/probe.yaml"
refused "a probe naming an undeclared port" "${checker[@]}" <"$work/probe.yaml"
sed 's/containerPort:/containerPrt:/' "$work/default/rendered.yaml" >"$work/field.yaml"
refused "an unknown API field (containerPrt)" "${checker[@]}" <"$work/field.yaml"
sed 's/^kind: PodDisruptionBudget$/kind: PodDisruptionBuget/' "$work/default/rendered.yaml" >"$work/kind.yaml"
refused "an unknown kind" "${checker[@]}" <"$work/kind.yaml"

echo "test-chart: took $(($(date +%s) - started)) s"
echo "test-chart: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
