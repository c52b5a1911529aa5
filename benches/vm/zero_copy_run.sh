#!/usr/bin/env bash
# Zero copy against copy mode and the kernel loop device, inside the 7.3 test VM
# (guest side: benches/vm/zero_copy.sh).
#
#   bash benches/vm/zero_copy_run.sh     # needs: bash tests/vm/setup.sh
#
# Environment: BENCH_ROUNDS (5), BENCH_RUNTIME_S (5), passed to the guest;
# VM_CPU (max), the qemu CPU model; VM_SMP (2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_ours
run_on_7_3 "$here/zero_copy.sh"
