#!/usr/bin/env bash
# Install the NBD clients and reference servers that tests/nbd_interop.rs,
# tests/nbd_netns.rs, layers/tests/nbd_leaf.rs (the `nbd` leaf against
# nbdkit's memory and file plugins and qemu-nbd), layers/tests/nbd_tls.rs
# (the same over TLS) and benches/nbd/ drive:
#
#   bash tests/nbd/setup.sh            # as root on Debian 12 (bookworm)
#
# Idempotent: when every tool is present it only checks and exits.
#   qemu-io, qemu-img, qemu-nbd  <- qemu-utils
#   nbdinfo, nbdcopy             <- libnbd-bin
#   nbdkit (memory, file plugins) <- nbdkit
#   fio (Debian's build has the nbd engine, through libnbd)  <- fio
#   ip, tc (network namespaces and veth pairs for tests/nbd_netns.rs) <- iproute2
#   openssl (the TLS tests make their certificates with it)  <- openssl
set -euo pipefail

declare -A need=(
    [qemu-io]=qemu-utils
    [qemu-img]=qemu-utils
    [qemu-nbd]=qemu-utils
    [nbdinfo]=libnbd-bin
    [nbdcopy]=libnbd-bin
    [nbdkit]=nbdkit
    [fio]=fio
    [ip]=iproute2
    [tc]=iproute2
    [openssl]=openssl
)
missing=()
for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "tests/nbd/setup.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The fio engine the interop test and the benchmark use.
fio --enghelp 2>/dev/null | grep -qw nbd || echo "tests/nbd/setup.sh: warning: this fio has no nbd engine" >&2
