#!/usr/bin/env bash
# Two threads on one queue (UBLK_F_PER_IO_DAEMON) against one thread on one
# queue and against two queues, inside the 7.3 test VM (guest side:
# benches/vm/threads.sh).
#
#   bash benches/vm/threads_run.sh     # needs: bash tests/vm/setup.sh
#
# Environment: BENCH_ROUNDS (5), BENCH_RUNTIME_S (5), passed to the guest;
# VM_CPU (max), the qemu CPU model; VM_SMP (2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_ours
run_on_7_3 "$here/threads.sh"
