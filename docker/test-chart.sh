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
#      /healthz (over HTTPS when the TOML turns tls_admin on), the worker must register with a
#      master started from the same values. Files the TOML names under /etc/sluice (the cluster
#      secret, the certificate, key and CA the chart mounts from Secrets) are made for the run
#      in a temporary directory (a random secret; `sluice dev-certs`, else openssl, for a CA and
#      a certificate for localhost, 127.0.0.1 and tls_server_name) and the paths rewritten;
#   4. values and manifests that must be refused: a key the chart manages, a schema violation,
#      a misspelled Sluice key, a probe naming an undeclared port, an unknown API field, and the
#      security values and manifests that do not go together (TLS without a certificate
#      source, a Certificate missing a worker's name or writing a Secret no pod mounts, an HTTP
#      probe on an HTTPS port, an unsigned preStop decommission, ...).
# Prints one line per check and "N passed, N failed" last; exits 1 on any failure.
#
#   docker/test-chart.sh
#
# Needs Go 1.24+ (builds the checker; installs helm v3 from the Go module proxy into
# target/tools/bin through docker/helm/install-helm.sh when HELM is unset and none is there),
# curl, a sluice binary (SLUICE_BIN, else target/release/sluice, else target/debug/sluice), and
# openssl when that binary has no `dev-certs` subcommand.
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
if "$sluice" dev-certs --help >/dev/null 2>&1; then
    certs_by="sluice dev-certs"
else
    command -v openssl >/dev/null || die "openssl not found, and $sluice has no dev-certs (apt-get install -y openssl)"
    certs_by=openssl
fi
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
echo "test-chart: $("$helm" version --short), $("$sluice" --version), go $(go env GOVERSION), test certificates by $certs_by"
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

# The text value of a key in a TOML file ("" when absent).
toml_text() { sed -n "s/^$2 = \"\(.*\)\"\$/\1/p" "$1"; }

# Writes a CA and a certificate it signs, for localhost, 127.0.0.1 and the given names, into
# DIR as ca.pem, cert.pem and key.pem: with `sluice dev-certs` when the binary has it, else
# openssl.
#   make_certs DIR [NAME...]
make_certs() {
    local dir=$1 name sans="DNS:localhost,IP:127.0.0.1" args=()
    shift
    mkdir -p "$dir"
    for name in "$@"; do
        sans+=",DNS:$name"
        args+=(--name "$name")
    done
    if [[ $certs_by == openssl ]]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=sluice test CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null &&
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -subj "/CN=localhost" -keyout "$dir/key.pem" -out "$dir/cert.csr" 2>/dev/null &&
            openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
                -CAcreateserial -days 2 -out "$dir/cert.pem" -extfile <(printf '%s\n' \
                    "subjectAltName=$sans" "basicConstraints=critical,CA:FALSE" \
                    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth") 2>/dev/null
    else
        "$sluice" dev-certs --out "$dir" --name localhost "${args[@]}" --ip 127.0.0.1 >/dev/null
    fi
}

# Rewrites a rendered TOML to read the files it names under /etc/sluice (the Secrets the
# chart mounts) from DIR/root, and makes them: the cluster secret (64 random characters,
# mode 0400) and the certificate, key and CA (make_certs, for tls_server_name too). Sets `run`
# to the rewritten file, DIR/<name>.run.toml.
#   materialize DIR FILE.toml
materialize() {
    local dir=$1 toml=$2 root=$1/root file
    run=${toml%.toml}.run.toml
    sed "s|\"/etc/sluice/|\"$root/etc/sluice/|" "$toml" >"$run"
    file=$(toml_text "$run" cluster_secret_file)
    if [[ -n $file && ! -e $file ]]; then
        mkdir -p "$(dirname "$file")"
        (umask 077 && tr -dc 'A-Za-z0-9' </dev/urandom | head -c 64 >"$file" && echo >>"$file")
        chmod 0400 "$file"
    fi
    if [[ -n $(toml_text "$run" tls_cert_file)$(toml_text "$run" tls_ca_file) && ! -e $dir/certs/cert.pem ]]; then
        local names=()
        file=$(toml_text "$run" tls_server_name)
        [[ -z $file ]] || names+=("$file")
        make_certs "$dir/certs" "${names[@]}" || return 1
    fi
    local key from
    for key in tls_cert_file:cert.pem tls_key_file:key.pem tls_ca_file:ca.pem; do
        file=$(toml_text "$run" "${key%%:*}")
        from=$dir/certs/${key#*:}
        if [[ -n $file && ! -e $file ]]; then
            mkdir -p "$(dirname "$file")"
            install -m 0400 "$from" "$file"
        fi
    done
}

# GETs PATH from the admin port at ADDR of a process running on TOML, into the file OUT: over
# HTTPS, trusting the test CA and expecting tls_server_name or 127.0.0.1, when the TOML turns
# tls_admin on. A binary that takes the TLS keys but serves no TLS yet answers plain HTTP:
# that is accepted and said in `admin_note`.
#   admin_get ADDR PATH TOML OUT
admin_get() {
    local addr=$1 path=$2 toml=$3 out=$4 port=${1##*:} name
    admin_note=""
    if ! grep -q '^tls_admin = true' "$toml"; then
        curl -fsS "http://$addr$path" >"$out"
        return
    fi
    name=$(toml_text "$toml" tls_server_name)
    name=${name:-127.0.0.1}
    if curl -fsS --cacert "$(toml_text "$toml" tls_ca_file)" --resolve "$name:$port:127.0.0.1" \
        "https://$name:$port$path" >"$out" 2>"$out.err"; then
        admin_note="HTTPS"
    elif curl -fsS "http://$addr$path" >"$out"; then
        admin_note="plain HTTP: this sluice takes tls_admin but serves no TLS yet"
    else
        cat "$out.err" >&2
        return 1
    fi
}

# Runs the master on a rendered master.toml: it must start and answer /healthz; sets `result`.
# A Raft group's config takes the id from the host name, so the master runs in its own UTS
# namespace named as the StatefulSet names the pod (unshare, as root), else with --id.
run_master() {
    local name=$1 dir=$2 ordinal=$3 admin run
    materialize "$dir" "$dir/master.toml" || return 1
    local toml=$run
    local run=("$sluice" master --config "$toml" --listen 127.0.0.1:0
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
    admin_get "$admin" /healthz "$toml" "$work/$name-healthz" || return 1
    result="$how; /healthz: $(cat "$work/$name-healthz")${admin_note:+ over $admin_note}"
    admin_get "$admin" /api/config "$toml" "$work/$name-config.json" || return 1
    kill -0 "$pid" || return 1
    stop "$pid"
    secured "$toml"
}

# Appends to `result` what of auth and TLS a TOML turns on.
secured() {
    local on=() key
    [[ -z $(toml_text "$1" cluster_secret_file) ]] || on+=("cluster secret")
    for key in tls_grpc tls_push tls_fetch tls_admin tls_connect; do
        grep -q "^$key = true" "$1" && on+=("$key")
    done
    [[ ${#on[@]} -eq 0 ]] || result+="; $(
        IFS=,
        echo "${on[*]}"
    )"
}

# Runs a worker on a rendered worker.toml with the environment the StatefulSet gives it: it
# must register with a master started on the same values' master.toml (a single master: its
# Raft keys left out), so both hold the same cluster secret and TLS settings; sets `result`.
run_worker() {
    local name=$1 dir=$2 dirs=() count i joined master_pid run
    materialize "$dir" "$dir/master.toml" || return 1
    grep -v '^\(peers\|id\|advertise\) = ' "$run" >"$dir/peer-master.toml"
    start "$name-master" "$sluice" master --config "$dir/peer-master.toml" --listen 127.0.0.1:0 \
        --admin-listen 127.0.0.1:0 --data-dir "$work/$name-master-data" || return 1
    master_pid=$pid
    materialize "$dir" "$dir/worker.toml" || return 1
    count=$(sed -n 's/^data_dirs = \[\(.*\)\]$/\1/p' "$run" | tr ',' '\n' | grep -c .)
    for ((i = 0; i < count; i++)); do dirs+=("$work/$name-disk-$i"); done
    joined=$(
        IFS=,
        echo "${dirs[*]}"
    )
    start "$name" env SLUICE_WORKER_ID="$name" SLUICE_WORKER_HOST=127.0.0.1 \
        SLUICE_WORKER_NODE=node-0 "$sluice" worker --config "$run" \
        --master "$(field "$ready" master)" \
        --push-listen 127.0.0.1:0 --fetch-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --data-dirs "$joined" || { stop "$master_pid"; return 1; }
    stop "$pid"
    stop "$master_pid"
    result="$count disk(s), registered as $(field "$ready" id) with a master on the same values"
    secured "$run"
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
    want=()
    # The secured example must render the cluster secret and the Certificate.
    [[ $name != secure-values ]] || want=(-want "StatefulSet,Service,ConfigMap,PodDisruptionBudget,Secret,Certificate")
    if "${checker[@]}" "${want[@]}" -extract "$out" <"$out/rendered.yaml" >"$out/check.txt" 2>&1; then
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
# Like `refused`, and the output must give the reason: it matches PATTERN (grep -E).
#   refused_because PATTERN WHAT COMMAND...
refused_because() {
    local pattern=$1 what=$2
    shift 2
    if "$@" >"$work/refused.out" 2>&1; then
        fail "$what: accepted"
    elif ! grep -qE -- "$pattern" "$work/refused.out"; then
        fail "$what: refused, but not for /$pattern/:"
        grep -m3 '^Error\|^FAIL\|^check:\|^- at' "$work/refused.out"
    else
        pass "$what: refused ($(grep -m1 -E -- "$pattern" "$work/refused.out" | head -c 150))"
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

# Security values that do not go together, refused by the chart with the reason.
refused_because 'say where the certificate comes from' "TLS without a certificate (tls.enabled, no secretName nor certManager)" \
    "${template[@]}" --set tls.enabled=true
refused_because 'issuerRef.name: the Issuer' "a Certificate without an issuer (tls.certManager.issuerRef.name empty)" \
    "${template[@]}" --set tls.enabled=true --set tls.certManager.enabled=true
refused_because 'only rendered for tls.enabled=true' "a Certificate with TLS off (tls.certManager.enabled, tls.enabled=false)" \
    "${template[@]}" --set tls.certManager.enabled=true --set tls.certManager.issuerRef.name=ca
refused_because 'tls.grpc=true, tls.push=false' "TLS on the gRPC port but not the push port" \
    "${template[@]}" --set tls.enabled=true --set tls.secretName=t --set tls.push=false
refused_because 'tls.grpc=true, tls.fetch=false' "TLS on the gRPC and push ports but not the fetch port" \
    "${template[@]}" --set tls.enabled=true --set tls.secretName=t --set tls.fetch=false
refused_because 'every port has TLS off' "TLS on with every port off" \
    "${template[@]}" --set tls.enabled=true --set tls.secretName=t --set tls.grpc=false \
    --set tls.push=false --set tls.fetch=false --set tls.admin=false
refused_because 'master.config.cluster_secret_file: set by the chart' "a key auth manages (master.config.cluster_secret_file)" \
    "${template[@]}" --set auth.enabled=true --set master.config.cluster_secret_file=/s
refused_because 'worker.config.tls_push: set by the chart' "a key tls manages (worker.config.tls_push)" \
    "${template[@]}" --set worker.config.tls_push=true
refused_because 'duration.*does not match pattern' "a certificate lifetime that is not a duration (tls.certManager.duration=90d)" \
    "${template[@]}" -f "$chart/ci/secure-values.yaml" --set tls.certManager.duration=90d
refused_because 'secretKey.*does not match pattern' "a Secret key the schema refuses (auth.secretKey=a/b)" \
    "${template[@]}" --set auth.enabled=true --set auth.secretKey=a/b
# Secured manifests broken after rendering, refused by the checker.
secure=$work/secure-values/rendered.yaml
sed 's/^  dnsNames:$/  dnsName:/' "$secure" >"$work/cert-field.yaml"
refused_because 'unknown field "dnsName"' "an unknown Certificate field (dnsName)" "${checker[@]}" <"$work/cert-field.yaml"
sed "/^    - '\*\.sluice-worker-headless\./d" "$secure" >"$work/cert-names.yaml"
refused_because 'do not cover sluice-worker-0' "a Certificate not naming the workers" "${checker[@]}" <"$work/cert-names.yaml"
sed 's/^  secretName: sluice-tls$/  secretName: sluice-other/' "$secure" >"$work/cert-secret.yaml"
refused_because 'writes Secret "sluice-other", which no master or worker mounts' "a Certificate writing a Secret no pod mounts" "${checker[@]}" <"$work/cert-secret.yaml"
sed 's/scheme: HTTPS$/scheme: HTTP/' "$secure" >"$work/probe-scheme.yaml"
refused_because 'uses HTTP on the admin port, which serves HTTPS' "an HTTP probe on an HTTPS admin port" "${checker[@]}" <"$work/probe-scheme.yaml"
sed '/- --cluster-secret-file$/,+1d' "$secure" >"$work/prestop.yaml"
refused_because 'without --cluster-secret-file' "a preStop decommission without the cluster secret" "${checker[@]}" <"$work/prestop.yaml"
sed 's/defaultMode: 0400$/defaultMode: 0444/' "$secure" >"$work/mode.yaml"
refused_because 'file mode 0444' "a Secret volume readable by everyone (defaultMode 0444)" "${checker[@]}" <"$work/mode.yaml"
sed 's|^    tls_ca_file = "/etc/sluice/tls/ca.crt"$|    tls_ca_file = "/etc/sluice/ca.crt"|' "$secure" >"$work/ca-path.yaml"
refused_because 'tls_ca_file = "/etc/sluice/ca.crt": mounted from "config", not a Secret' "a TOML file path no Secret serves (tls_ca_file in the ConfigMap volume)" "${checker[@]}" <"$work/ca-path.yaml"
sed 's/^    tls_push = true$/    tls_push = false/' "$secure" >"$work/push.yaml"
refused_because 'tls_connect = true, worker.toml tls_push = false' "masters dialing workers' push ports with TLS that serve none" "${checker[@]}" <"$work/push.yaml"

echo "test-chart: took $(($(date +%s) - started)) s"
echo "test-chart: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
