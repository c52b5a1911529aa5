#!/usr/bin/env bash
# The batch protocol against the per-tag one, inside the 7.3 test VM
# (guest side: benches/vm/batch.sh).
#
#   bash benches/vm/batch_run.sh     # needs: bash tests/vm/setup.sh
#
# Environment: BENCH_ROUNDS (5), BENCH_RUNTIME_S (5), passed to the guest;
# VM_CPU (max), the qemu CPU model; VM_SMP (2).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu

cd "$repo"
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --target "$target" --target-dir target/vm >&2

VM_KERNEL=7.3 VM_CPU=${VM_CPU:-max} \
    VM_GUEST_ENV="BENCH_ROUNDS=${BENCH_ROUNDS:-5} BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-5}" \
    VM_SCENARIO_TIMEOUT=${VM_SCENARIO_TIMEOUT:-900} VM_TIMEOUT=${VM_TIMEOUT:-1000} \
    bash "$repo/tests/vm/run.sh" "$repo/target/vm/$target/release/ublk-stack" "$here/batch.sh"
