#!/usr/bin/env bash
# Where the time of 4 KiB random writes to a tmpfs file goes, in one VM boot
# (guest side: benches/vm/tmpfs_write.sh, which says what runs).
#
#   bash benches/vm/tmpfs_write_run.sh                 # 7.3, -cpu max
#   VM_KERNEL=6.12 bash benches/vm/tmpfs_write_run.sh
#
# Environment: BENCH_ROUNDS (2), BENCH_RUNTIME_S (3), BENCH_PROFILE (1: perf
# profiles and a syscall count after the rounds); BENCH_OLD_BINARY (another
# static ublk-stack, served next to this build's, e.g. one from before a
# change); VM_KERNEL (7.3), VM_CPU (max).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_ours
export VM_KERNEL=${VM_KERNEL:-7.3} VM_CPU=${VM_CPU:-max}
echo "TMPFS_WRITE kernel=$VM_KERNEL cpu=$VM_CPU date=$(date -u +%FT%TZ) load before: $(cut -d' ' -f1-3 /proc/loadavg)"
extra=
if [[ -n ${BENCH_OLD_BINARY:-} ]]; then
    extra=$(mktemp -d)
    trap 'rm -rf "$extra"' EXIT
    cp "$BENCH_OLD_BINARY" "$extra/ublk-stack-old"
    extra=$extra/ublk-stack-old
fi
rc=0
VM_EXTRA_BINS=$extra VM_EXTRA_TOOLS="perf strace" VM_KEEP_SYMBOLS=1 \
    VM_GUEST_ENV="BENCH_ROUNDS=${BENCH_ROUNDS:-2} BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-3} BENCH_PROFILE=${BENCH_PROFILE:-1}" \
    VM_SCENARIO_TIMEOUT=${VM_SCENARIO_TIMEOUT:-900} VM_TIMEOUT=${VM_TIMEOUT:-1000} \
    bash "$repo/tests/vm/run.sh" "$ours" "$here/tmpfs_write.sh" |
    sed 's/^BENCH \{0,1\}//' || rc=$?
echo "TMPFS_WRITE load after: $(cut -d' ' -f1-3 /proc/loadavg) date=$(date -u +%FT%TZ)"
exit "$rc"
