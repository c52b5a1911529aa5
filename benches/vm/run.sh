#!/usr/bin/env bash
# ublk-stack inside the 6.12 test VM next to the kernel loop device and rublk's
# loop target, on the same tmpfs file (guest side: benches/vm/peers.sh).
#
#   bash benches/vm/run.sh          # needs: bash tests/vm/setup.sh
#   PROFILE=1 bash benches/vm/run.sh   # instead: perf profiles of ublk-stack and
#                                      # loop under the same fio run (profile.sh)
#
# Builds a static ublk-stack, and a static rublk (cargo install rublk
# --no-default-features, into benches/vm/.peers) the first time. Environment:
# BENCH_ROUNDS (3), BENCH_RUNTIME_S (5), VM_SMP (2), passed to the guest;
# VM_CPU (max,-fsrm,-erms), the qemu CPU model.
#
# Why the CPU model hides FSRM and ERMS: with them, the guest kernel copies to and
# from user memory with `rep movsb`, which qemu's TCG emulates one byte at a time.
# A ublk server's request makes such a copy (the file's page cache into the
# server's buffer) where the loop driver copies page to page inside the kernel
# (a plain memcpy), so on `-cpu max` that emulation artefact alone costs the
# ublk servers a fifth of all CPU samples (benches/vm/README.md has both
# profiles). On hardware with FSRM the instruction is fast. VM_CPU=max measures
# the artefact.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_ours

export VM_CPU=${VM_CPU:-max,-fsrm,-erms}
if [[ ${PROFILE:-} == 1 ]]; then
    command -v perf >/dev/null || apt-get install -y -q linux-perf >&2
    VM_EXTRA_TOOLS=perf VM_KEEP_SYMBOLS=1 bash "$repo/tests/vm/run.sh" "$ours" "$here/profile.sh" |
        sed -n 's/^PROFILE //p'
    exit "${PIPESTATUS[0]}"
fi

rublk=$(bash "$here/peers_build.sh")

VM_EXTRA_BINS=$rublk \
    VM_GUEST_ENV="BENCH_ROUNDS=${BENCH_ROUNDS:-3} BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-5}" \
    VM_SCENARIO_TIMEOUT=${VM_SCENARIO_TIMEOUT:-900} VM_TIMEOUT=${VM_TIMEOUT:-1000} \
    bash "$repo/tests/vm/run.sh" "$ours" "$here/peers.sh"
