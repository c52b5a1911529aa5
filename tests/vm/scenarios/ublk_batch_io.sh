# Batch I/O (UBLK_F_BATCH_IO): on 7.3, with UBLK_STACK_BATCH_IO=on, a file
# leaf on ext4 (zero copy) and a mirror of two files (zero copy, then copy
# mode) say BATCH_IO in `status --json`; fio random writes with crc32c
# verification and a mixed workload with flushes and discards pass; the data
# survives down and up; kill -9 in the middle of a verifying fio, then `up`,
# recovers the device with fio ending without an error; `ublk-stack upgrade`
# under a verifying fio hands the device to a new pid (the old one drains its
# queues instead of QUIESCE_DEV, which would fail a batch device's requests)
# while /dev/ublkbN never disappears, and fio ends without an error. The old
# daemon runs with UBLK_STACK_TEST_DRAIN_HOLD_MS, so its draining queues keep
# their FETCHes armed a while: the kernel hands them requests they never start,
# and the log must count some (`requeued=N`, N > 0 summed over the queues),
# which the kernel requeues to the new daemon (USER_RECOVERY_REISSUE) instead
# of failing them. On 6.12 `auto` uses
# the per-tag protocol silently and `on` is refused naming the kernel needed.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

case $(uname -r) in
7.*) batch=yes ;;
6.12.*) batch=no ;;
*) fail "unexpected kernel $(uname -r)" ;;
esac

scratch_ext4 256M

cat >/work/bfile.toml <<'TOML'
version = 1
[device]
name = "bfile"
top = "f"
queues = 2
queue_depth = 32
[layers.f]
type = "file"
path = "ext4/bfile.img"
size = "48MiB"
create = true
TOML

mirror_of_files bmirror

verify_write() {
    fio_dev --rw=randwrite --bsrange=4k-128k --verify=crc32c --verify_fatal=1 "$@"
}

# Reads, writes, flushes every 8 writes, and trims, verified where written.
mixed() {
    fio_dev --rw=randrw --rwmixread=40 --bs=4k --fsync=8 --number_ios=1500 \
        --verify=crc32c --verify_fatal=1 --do_verify=1
    fio_dev --rw=randtrim --bs=64k --number_ios=64
}

: >/work/daemon.err
trap 'rc=$?; ((rc == 0)) || tail -40 /work/daemon.err >&2' EXIT

# serve NAME: up in batch mode, check status, write + verify, mixed load,
# down, up, verify again, down.
serve() {
    local name=$1
    step "$name: up (batch, ${UBLK_STACK_ZERO_COPY:-auto})"
    up_device "/work/$name.toml"
    save_status "$name"
    grep -q '"BATCH_IO"' /work/status.json || { cat /work/status.json; fail "$name: BATCH_IO not in use"; }
    step "$name: randwrite + verify, then mixed with flush and discard"
    verify_write --do_verify=1
    mixed
    verify_write --do_verify=1 --randseed=7
    down_device "$name"
    no_ublk_devices
    step "$name: verify after down and up"
    up_device "/work/$name.toml"
    verify_write --verify_only --randseed=7
    down_device "$name"
    no_ublk_devices
}

if [[ $batch == yes ]]; then
    export UBLK_STACK_BATCH_IO=on
    ublk-stack features | grep -Eq '^BATCH_IO +15 +yes +yes' || { ublk-stack features; fail "features does not say BATCH_IO used"; }
    serve bfile
    serve bmirror
    cmp -i 12288 ext4/mirror-a.img ext4/mirror-b.img || fail "the mirror's legs differ"
    UBLK_STACK_ZERO_COPY=off serve bmirror
    cmp -i 12288 ext4/mirror-a.img ext4/mirror-b.img || fail "the mirror's legs differ (copy)"

    step "kill -9 under a verifying fio, then up recovers in batch mode"
    up_device /work/bfile.toml
    # Read when the queues start: the daemon recovering here is the one
    # upgraded below.
    export UBLK_STACK_TEST_DRAIN_HOLD_MS=500
    fio --name=k --filename="$DEV" --ioengine=io_uring --direct=1 --iodepth=16 \
        --rw=randwrite --bs=4k --size=24M --loops=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        >/work/fio-kill.out 2>&1 &
    fio_pid=$!
    sleep 1
    kill -0 "$fio_pid" || { cat /work/fio-kill.out; fail "fio ended before the kill"; }
    kill -9 "$DAEMON_PID"
    wait "$DAEMON_PID" || true
    sleep 1
    [[ -b $DEV ]] || fail "$DEV went away after the daemon was killed"
    up_device /work/bfile.toml
    unset UBLK_STACK_TEST_DRAIN_HOLD_MS
    [[ $READY == *"recovered)" ]] || fail "not recovered: $READY"
    save_status bfile
    grep -q '"BATCH_IO"' /work/status.json || { cat /work/status.json; fail "recovered device not in batch mode"; }
    fio_ends_clean "$fio_pid" /work/fio-kill.out "the recovery"

    step "upgrade of a batch device under a verifying fio: new pid, $DEV stays, no error"
    fio --name=u --filename="$DEV" --ioengine=io_uring --direct=1 --iodepth=16 \
        --rw=randwrite --bs=4k --size=24M --loops=2 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        >/work/fio-upgrade.out 2>&1 &
    fio_pid=$!
    watch_device
    sleep 1
    kill -0 "$fio_pid" || { cat /work/fio-upgrade.out; fail "fio ended before the upgrade"; }
    old_pid=$DAEMON_PID
    lines=$(wc -l </work/daemon.err)
    start=$(date +%s%N)
    ublk-stack upgrade bfile >/work/upgrade.out 2>&1 || { cat /work/upgrade.out; fail "upgrade of a batch device failed"; }
    echo "upgrade took $((($(date +%s%N) - start) / 1000000)) ms"
    cat /work/upgrade.out
    save_status bfile
    new_pid=$(grep -o '"pid":[0-9]*' /work/status.json | head -1 | cut -d: -f2)
    [[ -n $new_pid && $new_pid != "$old_pid" ]] || { cat /work/status.json; fail "status still shows pid $new_pid"; }
    grep -q '"BATCH_IO"' /work/status.json || { cat /work/status.json; fail "upgraded device not in batch mode"; }
    fio_ends_clean "$fio_pid" /work/fio-upgrade.out "the upgrade"
    wait "$old_pid" || fail "the old daemon exited $?"
    tail -n +$((lines + 1)) /work/daemon.err >/work/upgrade.err
    grep 'queue drained for a handover' /work/upgrade.err || fail "the old daemon did not drain its queues"
    grep -q 'a handover.s drain waits 500 ms longer' /work/daemon.err || fail "the drain hold was not in effect"
    requeued=$(grep 'queue drained for a handover' /work/upgrade.err |
        sed -n 's/.*requeued=\([0-9]*\).*/\1/p' | awk '{n += $1} END {print n + 0}')
    echo "requeued across the upgrade: $requeued"
    ((requeued > 0)) || fail "no request handed out during the drain was left to the kernel to requeue"
    device_stayed "during the upgrade"
    DAEMON_PID=$new_pid

    step "down --force with fio running ends the daemon"
    fio --name=f --filename="$DEV" --ioengine=io_uring --direct=1 --iodepth=32 \
        --rw=randrw --bs=4k --time_based --runtime=30 >/dev/null 2>&1 &
    fio_pid=$!
    sleep 2
    ublk-stack down bfile --force || fail "down --force failed"
    for i in $(seq 1 300); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$DAEMON_PID" 2>/dev/null && fail "daemon still running 30 s after down --force"
    wait "$DAEMON_PID" || true
    for i in $(seq 1 300); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$fio_pid" 2>/dev/null && fail "fio hangs after down --force"
    wait "$fio_pid" || true
    unset UBLK_STACK_BATCH_IO
    for i in $(seq 1 50); do [[ -e /dev/ublkc0 || -e /dev/ublkb0 ]] || break; sleep 0.1; done
    no_ublk_devices
else
    step "auto on 6.12: the per-tag protocol, silently"
    up_device /work/bfile.toml
    save_status bfile
    grep -q '"BATCH_IO"' /work/status.json && fail "BATCH_IO listed on 6.12"
    verify_write --do_verify=1
    down_device bfile
    no_ublk_devices
    step "on 6.12: refused, naming the kernel needed"
    if UBLK_STACK_BATCH_IO=on ublk-stack up /work/bfile.toml >/work/refused.out 2>&1; then
        fail "up with UBLK_STACK_BATCH_IO=on succeeded on 6.12"
    fi
    grep -q 'Linux 7.0 or later' /work/refused.out || { cat /work/refused.out; fail "no kernel version named"; }
    no_ublk_devices
fi
if grep -q 'refused to commit' /work/daemon.err; then
    cat /work/daemon.err
    fail "the kernel refused a commit"
fi
drop_scratch_ext4
step "ok"
