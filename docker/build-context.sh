#!/usr/bin/env bash
# Prepares the build context of docker/Dockerfile: the `sluice` binary, exactly the shared
# libraries it loads (as `ldd` lists them, the dynamic loader included) at the paths it loads
# them from, and the few /etc files a process needs (a non-root user 65532, name resolution).
#
#   docker/build-context.sh BINARY OUTDIR
#
# OUTDIR is created (it must not exist, or be empty) and then holds:
#   Dockerfile                  a copy of docker/Dockerfile
#   rootfs/                     copied to / in the image
#     usr/local/bin/sluice
#     lib/..., lib64/...        the libraries, at the paths ldd printed
#     etc/passwd, group, nsswitch.conf
#     tmp/                      (mode 1777)
#   data/                       an empty directory, copied to /var/lib/sluice owned by 65532
#
# Why `scratch` and not a distribution base image: no image registry is reachable from where
# Sluice is built, and the binary needs nothing but glibc (and libgcc_s for unwinding), which
# this script copies from the machine the binary was built on, so the image always matches it.
# When run as root it checks the result by running `sluice --version` chrooted into rootfs/,
# which fails if a library is missing.
set -euo pipefail

die() {
    echo "build-context: $*" >&2
    exit 1
}

[[ $# -eq 2 ]] || die "usage: $0 BINARY OUTDIR"
binary=$1
out=$2
[[ -f $binary && -x $binary ]] || die "$binary: not an executable file (build it with: cargo build --release -p sluice)"
for tool in ldd install; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install -y libc-bin coreutils)"
done
if [[ -e $out ]] && [[ -n $(ls -A "$out") ]]; then
    die "$out exists and is not empty"
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rootfs=$out/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$out/data"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/usr/local/bin/sluice"
install -m 0644 "$here/Dockerfile" "$out/Dockerfile"

# Every absolute path in ldd's output is a library to copy (`libc.so.6 => /lib/.../libc.so.6
# (0x...)`, and the loader as `/lib64/ld-linux-x86-64.so.2 (0x...)`); `linux-vdso.so.1` is
# the kernel's and has none. Symbolic links are followed: the file lands under the name the
# binary asks for.
if ! listing=$(ldd "$binary" 2>&1); then
    if grep -q "not a dynamic executable" <<<"$listing"; then
        listing=""
    else
        die "ldd $binary failed: $listing"
    fi
fi
if grep -q "not found" <<<"$listing"; then
    die "$binary needs libraries this machine lacks: $(grep "not found" <<<"$listing")"
fi
libraries=()
while read -r line; do
    for word in $line; do
        if [[ $word == /* ]]; then
            libraries+=("$word")
        fi
    done
done <<<"$listing"
for library in "${libraries[@]}"; do
    mkdir -p "$rootfs$(dirname "$library")"
    cp -L "$library" "$rootfs$library"
    chmod 0755 "$rootfs$library"
done

# A user and group for the process (65532, as distroless images use, so volume ownership and
# Kubernetes' runAsUser/fsGroup agree), and root so that tools reading the files find it.
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
sluice:x:65532:65532:sluice:/var/lib/sluice:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
sluice:x:65532:
EOF
# glibc 2.34 and later has its `files` and `dns` lookups built in: no libnss_* to copy. The
# container runtime (or the kubelet) mounts /etc/hosts and /etc/resolv.conf.
cat >"$rootfs/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"

if [[ $(id -u) -eq 0 ]] && command -v chroot >/dev/null; then
    if ! version=$(chroot "$rootfs" /usr/local/bin/sluice --version 2>&1); then
        die "the image's binary does not run chrooted into $rootfs: $version"
    fi
    echo "build-context: $version runs from $rootfs" >&2
fi
echo "build-context: $out ready ($(du -sh "$out" | cut -f1); libraries: ${libraries[*]:-none})" >&2
