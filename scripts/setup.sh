#!/usr/bin/env bash
# One-command, idempotent setup for a Debian 12 machine of this project's kind (run as root).
# Installs the Debian packages the project needs, makes bcc usable on this kernel, creates the
# project venv and mounts bpffs. Quiet on success; on failure it says what failed and shows the log.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG="$ROOT/.setup.log"
: >"$LOG"

fail() {
    echo "setup: $1" >&2
    if [ -s "$LOG" ]; then
        echo "setup: last lines of $LOG:" >&2
        tail -n 25 "$LOG" >&2
    fi
    exit 1
}

run() {  # run a step quietly, keeping its output in the log
    "$@" >>"$LOG" 2>&1
}

[ "$(id -u)" = 0 ] || fail "must run as root (it installs Debian packages and mounts bpffs)"

# --- Debian packages -------------------------------------------------------------------------
DEB_PACKAGES=(
    etcd-server etcd-client            # the kvstore, one process per cluster
    wireguard-tools wireguard-go       # wg(8) and userspace WireGuard (no kernel module here)
    bpftool python3-bpfcc clang        # BPF programs compiled by bcc at agent start
    linux-headers-amd64                # bcc needs kernel headers; the 6.1 ones serve this kernel
    iproute2 tcpdump iputils-ping curl # namespaces, veths, routes; wire checks; requests in lab pods
    nftables                           # lab faults: partitions are drop rules in lab namespaces
    shellcheck                         # tests lint the kind-configs scripts
)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# The machine image ships a kubectl client; only where none exists install Debian's.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    run apt-get update -q || fail "apt-get update failed (is the Debian mirror reachable?)"
    DEBIAN_FRONTEND=noninteractive run apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || fail "apt-get install ${missing[*]} failed"
fi

# --- Kernel headers for bcc ------------------------------------------------------------------
# bcc looks for /lib/modules/$(uname -r)/build; this kernel ships none, the Debian 6.1 headers work
# for networking programs (they use the uapi headers).
KVER=$(uname -r)
HDR_ARCH=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
HDR_COMMON=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$HDR_ARCH" ] && [ -n "$HDR_COMMON" ] || fail "no linux-headers-*-amd64 under /usr/src"
mkdir -p "/lib/modules/$KVER"
for pair in "build:$HDR_ARCH" "source:$HDR_COMMON"; do
    link="/lib/modules/$KVER/${pair%%:*}"
    target="${pair#*:}"
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        : # a real kernel tree is already there: keep it
    elif [ "$(readlink "$link" 2>/dev/null || true)" != "$target" ]; then
        ln -sfn "$target" "$link"
    fi
done

# --- bpffs ------------------------------------------------------------------------------------
if ! mountpoint -q /sys/fs/bpf; then
    mkdir -p /sys/fs/bpf
    run mount -t bpf bpf /sys/fs/bpf || fail "cannot mount bpffs on /sys/fs/bpf"
fi

# --- Python venv ------------------------------------------------------------------------------
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "$PY is older than Python 3.11"
if [ ! -x .venv/bin/python ]; then
    run "$PY" -m venv .venv || fail "cannot create .venv with $PY"
fi
STAMP=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$STAMP" ]; then
    echo "setup: installing Python packages into .venv"
    run .venv/bin/python -m pip install -q --upgrade pip || fail "pip upgrade failed"
    run .venv/bin/python -m pip install -q -e '.[dev]' || fail "pip install of the project failed"
    rm -f .venv/.installed-*
    touch "$STAMP"
fi

# Expose only Debian's bcc module to the venv: all of dist-packages would leak old
# cryptography and PyYAML into it.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/debian-bcc
ln -sfn /usr/lib/python3/dist-packages/bcc .venv/debian-bcc/bcc
echo "$ROOT/.venv/debian-bcc" >"$SITE/debian-bcc.pth"
.venv/bin/python -c 'import bcc' >>"$LOG" 2>&1 || fail "bcc does not import in .venv"
