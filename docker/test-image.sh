#!/usr/bin/env bash
# Builds the Sluice image from a binary and runs a cluster of containers from it: one master and
# two workers (host network, each on its own free ports; the master's state on the image's
# VOLUME, one worker's data on a named volume, the other's on a tmpfs), all with a read-only
# root file system, no capabilities and the image's non-root user. Waits for /readyz on every
# admin port, then runs a verified `sluice bench` from the host binary through them, checks it
# exited 0 with nothing lost or duplicated, runs the chart's preStop command inside a worker
# container (when the binary has `sluice admin decommission`) and checks the worker leaves
# readiness, checks every container exits 0 on SIGTERM, prints the figures, and removes
# every container, volume and image it made.
#
#   docker/test-image.sh [BINARY]          (default: target/release/sluice)
#
# Needs, and installs none of them itself:
#   podman      apt-get install -y podman   (Debian 12: 4.3.1, with conmon and crun)
#   runc        apt-get install -y runc     (the OCI runtime used: crun 1.8 refuses to start
#                                            containers on a cgroup v1/v2 hybrid host, "cgroups
#                                            in hybrid mode not supported")
#   curl        apt-get install -y curl
#   root        podman runs rootful here: no user namespaces or subuid ranges to set up
# Podman runs with its own storage under a temporary directory (vfs driver: no overlay mounts,
# works inside a container or VM sandbox), cgroupfs (no systemd), file events (no journald),
# runc, and host networking (no bridge, netavark or iptables): nothing is left behind in the
# machine's podman storage. Containers get --ulimit values at or below this shell's hard
# limits: podman's defaults (nofile 1048576, nproc 4194304) are above them where the runtime
# may not raise limits (no CAP_SYS_RESOURCE), and the container fails to start with
# "setrlimit ... operation not permitted". PODMAN_FLAGS adds global podman flags;
# PODMAN_RUNTIME replaces runc (e.g. crun on a pure cgroup v2 host).
#
# Environment: BENCH_ARGS replaces the bench workload ("--maps 4 --partitions 16
# --bytes-per-map 16MiB"), KEEP=1 keeps the containers and storage for inspection.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
binary=${1:-$here/../target/release/sluice}
bench_args=${BENCH_ARGS:-"--maps 4 --partitions 16 --bytes-per-map 16MiB"}

die() {
    echo "test-image: $*" >&2
    exit 1
}
log() { echo "test-image: $*" >&2; }
now_ms() { date +%s%3N; }
# Seconds since a now_ms reading, with one decimal.
since() {
    local ms=$(($(now_ms) - $1))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

runtime=${PODMAN_RUNTIME:-runc}
missing=()
command -v podman >/dev/null || missing+=("podman (apt-get install -y podman)")
command -v "$runtime" >/dev/null || missing+=("$runtime (apt-get install -y $runtime)")
command -v curl >/dev/null || missing+=("curl (apt-get install -y curl)")
[[ ${#missing[@]} -eq 0 ]] || die "missing: ${missing[*]}"
[[ $(id -u) -eq 0 ]] || die "run as root: the test uses rootful podman (no subuid setup needed)"
[[ -x $binary ]] || die "$binary: no such binary (cargo build --release -p sluice)"
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")

work=$(mktemp -d /tmp/sluice-image-test.XXXXXX)
tag="localhost/sluice-test:$(basename "$work" | tr 'A-Z.' 'a-z-')"
read -r -a extra_flags <<<"${PODMAN_FLAGS:-}"
podman=(podman --root "$work/storage" --runroot "$work/run" --tmpdir "$work/libpod"
    --storage-driver vfs --cgroup-manager cgroupfs --events-backend file --runtime "$runtime"
    "${extra_flags[@]}")
# At or below the hard limits (see above); a worker wants many files, threads stay few.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
nproc=$(ulimit -Hu)
[[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
containers=()

cleanup() {
    local status=$?
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept: ${podman[*]} ps -a; work dir $work"
        return
    fi
    if [[ $status -ne 0 ]]; then
        for name in "${containers[@]}"; do
            echo "----- logs of $name (last 30 lines)" >&2
            "${podman[@]}" logs --tail 30 "$name" >&2 2>&1 || true
        done
    fi
    for name in "${containers[@]}"; do
        "${podman[@]}" rm -f -v -t 5 "$name" >/dev/null 2>&1 || true
    done
    "${podman[@]}" volume rm -f "$(basename "$work")-w1" >/dev/null 2>&1 || true
    "${podman[@]}" rmi -f "$tag" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT INT TERM

# Does podman run containers here at all? Its own answer names the missing piece.
if ! info=$("${podman[@]}" info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupsVersion}} {{.Store.GraphDriverName}}' 2>&1); then
    die "podman cannot start here: $info"
fi
log "podman $(podman --version | awk '{print $3}'): runtime, cgroups, storage = $info"

# The image.
started=$(now_ms)
"$here/build-context.sh" "$binary" "$work/context"
"${podman[@]}" build --quiet --tag "$tag" "$work/context" >/dev/null
build_took=$(since "$started")
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$tag")
log "image $tag built in $build_took s, $((size / 1024 / 1024)) MiB"
user=$("${podman[@]}" image inspect --format '{{.Config.User}}' "$tag")
[[ $user == 65532:65532 ]] || die "image user is '$user', not 65532:65532"

# The containers: hardened as the chart runs them.
run() {
    local name=$1
    shift
    containers+=("$name")
    "${podman[@]}" run --detach --name "$name" --network host --read-only \
        --cap-drop all --security-opt no-new-privileges --env RUST_LOG=info \
        --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" "$@" >/dev/null
}

# Waits for a container's first stdout line that starts with `{` (the ready line).
ready_line() {
    local name=$1 deadline=$((SECONDS + 60)) line
    while ((SECONDS < deadline)); do
        line=$("${podman[@]}" logs "$name" 2>/dev/null | grep -m1 '^{' || true)
        if [[ -n $line ]]; then
            echo "$line"
            return
        fi
        state=$("${podman[@]}" inspect --format '{{.State.Status}}' "$name")
        [[ $state == running ]] || die "$name is $state before it was ready"
        sleep 0.2
    done
    die "$name printed no ready line within 60 s"
}

# A JSON string field of a one-line object, without jq.
field() { sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p" <<<"$1"; }
# A JSON number field, with two decimals.
number() { printf '%.2f' "$(sed -n "s/.*\"$2\":\\([0-9.eE+-]*\\).*/\\1/p" <<<"$1")"; }

wait_ready() {
    local what=$1 addr=$2 deadline=$((SECONDS + 60))
    until curl -fsS "http://$addr/readyz" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what: http://$addr/readyz not ready within 60 s"
        sleep 0.2
    done
    curl -fsS "http://$addr/healthz" >/dev/null || die "$what: /healthz fails"
    # Read whole, then searched: `curl | grep -q` under pipefail fails at random when grep
    # exits at its first match and curl meets the closed pipe (exit 23).
    local metrics
    metrics=$(curl -fsS "http://$addr/metrics") || die "$what: /metrics fails"
    grep -q '^# HELP sluice_' <<<"$metrics" || die "$what: /metrics has no sluice metric"
    log "$what ready (admin http://$addr)"
}

# Every process binds port 0 and prints what it got: no fixed ports, no clash with other tests.
run sluice-test-master-$$ "$tag" master \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir /var/lib/sluice/master
line=$(ready_line sluice-test-master-$$)
master=$(field "$line" master)
master_admin=$(field "$line" admin)
[[ -n $master && -n $master_admin ]] || die "master ready line without addresses: $line"
wait_ready master "$master_admin"

"${podman[@]}" volume create "$(basename "$work")-w1" >/dev/null
worker_flags=(--master "$master" --host 127.0.0.1 --push-listen 127.0.0.1:0
    --fetch-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --memory-budget 256MiB)
run sluice-test-worker1-$$ --volume "$(basename "$work")-w1:/var/lib/sluice" \
    --env SLUICE_WORKER_ID=worker-1 --env SLUICE_WORKER_NODE=node-1 "$tag" worker \
    "${worker_flags[@]}" --data-dirs /var/lib/sluice/disk-0
run sluice-test-worker2-$$ --tmpfs /var/lib/sluice:rw,size=1g,U \
    --env SLUICE_WORKER_ID=worker-2 --env SLUICE_WORKER_NODE=node-2 "$tag" worker \
    "${worker_flags[@]}" --data-dirs /var/lib/sluice/disk-0,/var/lib/sluice/disk-1
worker_admins=()
for name in sluice-test-worker1-$$ sluice-test-worker2-$$; do
    line=$(ready_line "$name")
    admin=$(field "$line" admin)
    [[ -n $admin ]] || die "$name ready line without an admin address: $line"
    wait_ready "$name ($(field "$line" id), push $(field "$line" push))" "$admin"
    worker_admins+=("$admin")
done
engines=$("${podman[@]}" logs sluice-test-worker1-$$ 2>&1 |
    sed -n 's/.*write engine selected.* engine="\([a-z_]*\)".*/\1/p' | sort -u | tr '\n' ' ')
log "worker write engine in a container: ${engines:-unknown}"

# The workload, from the host binary through the containers.
log "bench: $binary bench --master $master $bench_args --verify"
bench_started=$(now_ms)
set +e
# shellcheck disable=SC2086
"$binary" bench --master "$master" $bench_args --verify >"$work/bench.out" 2>"$work/bench.err"
status=$?
set -e
bench_took=$(since "$bench_started")
report=$(grep '^{' "$work/bench.out" | tail -1 || true)
if [[ $status -ne 0 || -z $report ]]; then
    tail -20 "$work/bench.err" >&2
    die "bench exited $status; report: ${report:-none}"
fi
grep -q '"lost":0,' <<<"$report" || die "bench lost records: $report"
grep -q '"duplicated":0,' <<<"$report" || die "bench duplicated records: $report"
grep -q '"verified":true' <<<"$report" || die "bench did not verify: $report"

# The chart's preStop hook, run the same way (exec form, no shell in the image): the worker
# must leave readiness. Skipped by a binary without `sluice admin decommission`.
if "$binary" admin decommission --help >/dev/null 2>&1; then
    prestop_started=$(now_ms)
    timeout 120 "${podman[@]}" exec sluice-test-worker1-$$ /usr/local/bin/sluice admin decommission \
        --worker "${worker_admins[0]}" >"$work/prestop.out" 2>&1 ||
        die "the preStop command failed: $(tail -5 "$work/prestop.out")"
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://${worker_admins[0]}/readyz")
    [[ $code != 200 ]] || die "worker 1 still ready after decommission"
    log "preStop decommission in the container took $(since "$prestop_started") s; /readyz now $code"
else
    log "skipped the preStop check: this binary has no 'sluice admin decommission'"
fi

# A graceful stop: SIGTERM to PID 1 (the binary itself) ends every container with status 0.
for name in sluice-test-worker2-$$ sluice-test-worker1-$$ sluice-test-master-$$; do
    stop_started=$(now_ms)
    "${podman[@]}" stop -t 20 "$name" >/dev/null
    code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name")
    [[ $code == 0 ]] || die "$name exited $code on SIGTERM"
    log "$name stopped on SIGTERM in $(since "$stop_started") s, exit 0"
done

echo "image: $tag, $((size / 1024 / 1024)) MiB; built in $build_took s; bench took $bench_took s"
echo "bench: write $(number "$report" write_gbps) GB/s, read $(number "$report" read_gbps) GB/s," \
    "loopback $(number "$report" loopback_gbps) GB/s, records $(number "$report" records_read | cut -d. -f1)," \
    "lost $(number "$report" lost | cut -d. -f1), duplicated $(number "$report" duplicated | cut -d. -f1)"
echo "bench report: $report"
echo "test-image: 1 master and 2 workers in containers, bench verified, lost 0, duplicated 0"
