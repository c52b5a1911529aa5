#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 20), starting from the seeds
# in fuzz/corpus/TARGET/ (read only: new inputs go to target/fuzz-corpus/).
# Prints executions per target; exits 1 if any target crashed, hung or leaked
# (the input is kept in fuzz/artifacts/TARGET/ and replays with
# `cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/FILE`).
#
#   bash fuzz/run.sh          # about 20 s per target, as .ci/run does
#   bash fuzz/run.sh 3600     # an hour per target
#
# The machine has the stable toolchain only: the targets are built without a
# sanitizer (`-s none`), which stable rustc accepts; libFuzzer's coverage
# guidance and Rust's own checks (bounds, overflow: debug assertions are on)
# still apply.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cargo fuzz build -s none
work=../target/fuzz-corpus
log_dir=../target/fuzz-logs
mkdir -p "$log_dir"
failed=()
printf '%-16s %12s %14s\n' target execs/s executions
for target in $(cargo fuzz list); do
    mkdir -p "$work/$target" "corpus/$target"
    log="$log_dir/$target.log"
    if ! cargo fuzz run -s none "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        failed+=("$target")
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    printf '%-16s %12s %14s\n' "$target" "${rate:-?}" "${execs:-?}"
done
if ((${#failed[@]})); then
    for target in "${failed[@]}"; do
        echo "fuzz/run.sh: $target failed; last lines of $log_dir/$target.log:" >&2
        tail -n 30 "$log_dir/$target.log" >&2
    done
    exit 1
fi
echo "fuzz/run.sh: ${seconds} s per target, 0 crashes"
