# Sourced by the host-side bench scripts: the static build they all boot, and
# one 7.3 VM boot of a guest script. Sets $here, $repo and $ours, and works
# from $repo.
# shellcheck shell=bash

here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu
ours=$repo/target/vm/$target/release/ublk-stack
cd "$repo"

# A static release build: the guest has no Rust runtime libraries to link against.
build_ours() {
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target "$target" --target-dir target/vm >&2
}

# Boot 7.3 (`-cpu max` unless VM_CPU says otherwise) and run guest script $1
# with BENCH_ROUNDS (5) and BENCH_RUNTIME_S (5).
run_on_7_3() {
    VM_KERNEL=7.3 VM_CPU=${VM_CPU:-max} \
        VM_GUEST_ENV="BENCH_ROUNDS=${BENCH_ROUNDS:-5} BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-5}" \
        VM_SCENARIO_TIMEOUT=${VM_SCENARIO_TIMEOUT:-900} VM_TIMEOUT=${VM_TIMEOUT:-1000} \
        bash "$repo/tests/vm/run.sh" "$ours" "$1"
}
