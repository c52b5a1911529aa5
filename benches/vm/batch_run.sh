#!/usr/bin/env bash
# The batch protocol against the per-tag one, inside the 7.3 test VM
# (guest side: benches/vm/batch.sh).
#
#   bash benches/vm/batch_run.sh     # needs: bash tests/vm/setup.sh
#
# Environment: BENCH_ROUNDS (5), BENCH_RUNTIME_S (5), passed to the guest;
# VM_CPU (max), the qemu CPU model; VM_SMP (2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_ours
run_on_7_3 "$here/batch.sh"
