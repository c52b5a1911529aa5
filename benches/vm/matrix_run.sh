#!/usr/bin/env bash
# The performance matrix: ublk-stack next to the kernel loop device and rublk,
# on a tmpfs file and on a file on a virtio disk, in one VM boot (guest side:
# benches/vm/matrix.sh, which says what runs).
#
#   bash benches/vm/matrix_run.sh                # 7.3, -cpu max
#   VM_KERNEL=6.12 bash benches/vm/matrix_run.sh
#   VM_CPU=max,-fsrm,-erms bash benches/vm/matrix_run.sh
#
# Needs `bash tests/vm/setup.sh`; builds a static ublk-stack and, the first time,
# a static rublk (peers_build.sh). The virtio disk is a 2 GiB sparse raw file in
# the host's temp dir (MATRIX_DISK_DIR, default /tmp; better not a tmpfs),
# deleted at the end; qemu's default cache mode, so the guest's reads of it may
# come from the host's page cache. Environment: BENCH_ROUNDS (3),
# BENCH_RUNTIME_S (3), BENCH_RAMP_S (1), BENCH_PATTERNS, BENCH_BACKINGS,
# BENCH_OURS_QUEUES, BENCH_OURS_X (see matrix.sh), passed to the guest, and BENCH_GUEST_ENV,
# more VAR=VALUE words for the guest (UBLK_STACK_ZERO_COPY=on, say, which the
# daemons there then run with); VM_KERNEL (7.3);
# VM_CPU (max); VM_SMP (2); VM_MEM (2G). Prints the guest's RUN and INFO lines and the markdown tables,
# with the host's load average before and after.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_ours
rublk=$(bash "$here/peers_build.sh")

disk_dir=${MATRIX_DISK_DIR:-${TMPDIR:-/tmp}}
[[ $(stat -f -c %T "$disk_dir") != tmpfs ]] ||
    echo "matrix_run.sh: $disk_dir is a tmpfs; the virtio disk lives in host RAM" >&2
disk=$(mktemp "$disk_dir/ublk-stack-matrix-disk.XXXXXX")
trap 'rm -f "$disk"' EXIT
truncate -s 2G "$disk"

export VM_KERNEL=${VM_KERNEL:-7.3} VM_CPU=${VM_CPU:-max}
echo "MATRIX kernel=$VM_KERNEL cpu=$VM_CPU smp=${VM_SMP:-2} mem=${VM_MEM:-2G}" \
    "rounds=${BENCH_ROUNDS:-3} runtime_s=${BENCH_RUNTIME_S:-3} ramp_s=${BENCH_RAMP_S:-1}" \
    "disk_fs=$(stat -f -c %T "$disk_dir") date=$(date -u +%FT%TZ)"
echo "MATRIX load before: $(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
VM_EXTRA_BINS=$rublk \
    VM_QEMU_ARGS="-drive file=$disk,format=raw,if=virtio" \
    VM_GUEST_ENV="BENCH_ROUNDS=${BENCH_ROUNDS:-3} BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-3} BENCH_RAMP_S=${BENCH_RAMP_S:-1} BENCH_PATTERNS=${BENCH_PATTERNS:-rr4k,rw4k,sr64k,sr1m,sw1m,lat,null} BENCH_BACKINGS=${BENCH_BACKINGS:-tmpfs,disk} BENCH_OURS_QUEUES=${BENCH_OURS_QUEUES:-} BENCH_OURS_X=${BENCH_OURS_X:-} ${BENCH_GUEST_ENV:-}" \
    VM_SCENARIO_TIMEOUT=${VM_SCENARIO_TIMEOUT:-2400} VM_TIMEOUT=${VM_TIMEOUT:-2500} \
    bash "$repo/tests/vm/run.sh" "$ours" "$here/matrix.sh" |
    sed 's/^BENCH \{0,1\}//' || rc=$?
echo "MATRIX load after: $(cut -d' ' -f1-3 /proc/loadavg) date=$(date -u +%FT%TZ)"
exit "$rc"
