# shellcheck shell=bash
# Sourced by scenarios: `. /vmtest/lib.sh`. Strict mode plus a line number on
# failure, so a failing scenario's log says which command broke.
set -euo pipefail
trap 'echo "scenario: line $LINENO: \"$BASH_COMMAND\" failed (rc=$?)" >&2' ERR

# step MESSAGE: a visible progress line in the serial log.
step() { echo "--- $*"; }

# fail MESSAGE: stop the scenario with a reason.
fail() {
    echo "scenario: FAIL: $*" >&2
    exit 1
}

# bench_randread DEVICE LABEL: fio 4 KiB random reads at queue depth 32 with
# O_DIRECT over io_uring, the one workload loop and ublk devices are compared
# with. Prints "BENCH LABEL randread-4k-qd32 iops=N bw_kib_s=N clat_mean_us=N";
# run.sh copies BENCH lines to its stdout. BENCH_RUNTIME_S overrides the 10 s run.
bench_randread() {
    local dev=$1 label=$2 terse
    terse=$(fio --name=randread --filename="$dev" --ioengine=io_uring --direct=1 \
        --rw=randread --bs=4k --iodepth=32 --numjobs=1 \
        --time_based --runtime="${BENCH_RUNTIME_S:-10}" --ramp_time=2 \
        --output-format=terse --terse-version=3)
    # terse v3 fields: 7 read bandwidth KiB/s, 8 read IOPS, 16 read completion latency mean (us).
    awk -F';' -v label="$label" \
        '{printf "BENCH %s randread-4k-qd32 iops=%s bw_kib_s=%s clat_mean_us=%s\n", label, $8, $7, $16}' <<<"$terse"
}

# bench_iops DEVICE PATTERN: fio 4 KiB PATTERN (randread or randwrite) at
# QD32, O_DIRECT over io_uring, one job, BENCH_RUNTIME_S (5) after a 1 s ramp;
# prints the IOPS.
bench_iops() {
    local terse
    terse=$(fio --name=b --filename="$1" --ioengine=io_uring --direct=1 --rw="$2" \
        --bs=4k --iodepth=32 --time_based --runtime="${BENCH_RUNTIME_S:-5}" --ramp_time=1 \
        --output-format=terse --terse-version=3)
    # terse v3: field 8 read IOPS, 49 write IOPS.
    awk -F';' -v p="$2" '{print (p == "randread") ? $8 : $49}' <<<"$terse"
}

# bench_median FILE: the median iops= value of the BENCH lines in FILE (the upper
# one of the middle two for an even count).
bench_median() {
    sed -n 's/.* iops=\([0-9.]*\).*/\1/p' "$1" | sort -n | awk '{v[NR] = $1} END {print v[int(NR / 2) + 1]}'
}

# wait_for PATH [SECONDS]: wait until PATH exists (a device node, a socket),
# polling every 0.1 s; fails after SECONDS (default 30; TCG is slow).
wait_for() {
    local path=$1 tries=$((${2:-30} * 10))
    while [[ ! -e $path ]]; do
        ((tries-- > 0)) || fail "$path did not appear within ${2:-30}s"
        sleep 0.1
    done
}

# ublk_up CONFIG [SECONDS]: start `ublk-stack up CONFIG` in the background and
# wait for it to print the device path (DESIGN.md §2). Sets UBLK_DEV (the path)
# and UBLK_PID; its output goes to /work/ublk-up.NAME.log and, on failure, to
# the serial log. Stop it with ublk_stop.
ublk_up() {
    local config=$1 seconds=${2:-30} log tries
    log=/work/ublk-up.$(basename "$config" .toml).log
    ublk-stack up "$config" >"$log" 2>&1 &
    UBLK_PID=$!
    tries=$((seconds * 10))
    UBLK_DEV=
    while :; do
        UBLK_DEV=$(grep -om1 '/dev/ublkb[0-9]\+' "$log" || true)
        [[ -z $UBLK_DEV ]] || break
        if ! kill -0 "$UBLK_PID" 2>/dev/null; then
            cat "$log" >&2
            fail "ublk-stack up $config exited before printing a device"
        fi
        if ((tries-- <= 0)); then
            cat "$log" >&2
            fail "ublk-stack up $config printed no device within ${seconds}s"
        fi
        sleep 0.1
    done
    wait_for "$UBLK_DEV" "$seconds"
}

# ublk_stop: SIGTERM the daemon started by ublk_up and check it exits 0.
ublk_stop() {
    local rc=0
    kill -TERM "$UBLK_PID"
    wait "$UBLK_PID" || rc=$?
    ((rc == 0)) || fail "ublk-stack up exited with $rc after SIGTERM"
}
