#!/usr/bin/env bash
# ublk-stack inside the 6.12 test VM next to the kernel loop device and rublk's
# loop target, on the same tmpfs file (guest side: benches/vm/peers.sh).
#
#   bash benches/vm/run.sh          # needs: bash tests/vm/setup.sh
#
# Builds a static ublk-stack, and a static rublk (cargo install rublk
# --no-default-features, into benches/vm/.peers) the first time. Environment:
# BENCH_ROUNDS (3), BENCH_RUNTIME_S (5), VM_SMP (2), passed to the guest.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu
peers=$here/.peers

cd "$repo"
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --target "$target" --target-dir target/vm >&2
ours=$repo/target/vm/$target/release/ublk-stack

rublk=$peers/bin/rublk
if [[ ! -x $rublk ]]; then
    # rublk's sys crate runs bindgen, which needs libclang.
    if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
        apt-get install -y -q libclang-dev >&2
    fi
    RUSTFLAGS='-C target-feature=+crt-static' cargo install rublk --locked \
        --no-default-features --root "$peers" --target "$target" \
        --target-dir "$peers/target" >&2
fi

VM_EXTRA_BINS=$rublk \
    VM_GUEST_ENV="BENCH_ROUNDS=${BENCH_ROUNDS:-3} BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-5}" \
    VM_SCENARIO_TIMEOUT=${VM_SCENARIO_TIMEOUT:-900} VM_TIMEOUT=${VM_TIMEOUT:-1000} \
    bash "$repo/tests/vm/run.sh" "$ours" "$here/peers.sh"
