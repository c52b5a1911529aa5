# Two threads per queue (UBLK_STACK_QUEUE_THREADS=2, UBLK_F_PER_IO_DAEMON):
# on 7.3 a file leaf on ext4 (zero copy), on tmpfs (zero copy with USER_COPY
# for small requests) and on tmpfs in copy mode, one queue each, say PER_IO_DAEMON in `features` and `status --json`, run threads
# ublkN-q0.0 and ublkN-q0.1, pass fio random writes with crc32c verification
# and a mixed load with flushes and discards, and at `down` both threads report
# requests served (the kernel shared the queue's tags between them); kill -9
# under a verifying fio, then `up`, recovers with two threads and fio ends
# without an error; `ublk-stack upgrade` under a verifying fio (QUIESCE_DEV
# aborts each thread's armed tags) hands the device to a new pid with no error.
# On 6.12 the setting is refused, naming the kernel needed, and nothing is
# created.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

case $(uname -r) in
7.*) several=yes ;;
6.12.*) several=no ;;
*) fail "unexpected kernel $(uname -r)" ;;
esac

scratch_ext4 256M
mkdir -p /work/tmp
mount -t tmpfs -o size=96M tmpfs /work/tmp

# config NAME PATH: one queue of 32 tags over a 48 MiB file.
config() {
    cat >"/work/$1.toml" <<TOML
version = 1
[device]
name = "$1"
top = "f"
queues = 1
queue_depth = 32
[layers.f]
type = "file"
path = "$2"
size = "48MiB"
create = true
TOML
}
config tzc ext4/t.img
config ttmpfs tmp/t.img

# two_threads: the daemon runs ublkN-q0.0 and ublkN-q0.1 and no ublkN-q0.
two_threads() {
    local id=${DEV#/dev/ublkb} comms
    comms=$(cat /proc/"$DAEMON_PID"/task/*/comm | sort | tr '\n' ' ')
    [[ $comms == *"ublk$id-q0.0 "* && $comms == *"ublk$id-q0.1 "* ]] ||
        fail "not two threads on queue 0: $comms"
    [[ $comms != *"ublk$id-q0 "* ]] || fail "a single queue thread too: $comms"
}

: >/work/daemon.err
trap 'rc=$?; ((rc == 0)) || tail -40 /work/daemon.err >&2' EXIT

# serve NAME DATA_PATH: up with two threads, check, write + verify, mixed
# load, down; both threads served requests; up again and verify.
serve() {
    local name=$1 path=$2 lines by
    step "$name: up with two threads on its queue ($path)"
    up_device "/work/$name.toml"
    save_status "$name"
    grep -q '"PER_IO_DAEMON"' /work/status.json || { cat /work/status.json; fail "$name: PER_IO_DAEMON not in use"; }
    grep -q "\"data_path\":\"$path\"" /work/status.json || { cat /work/status.json; fail "$name: not $path"; }
    two_threads
    step "$name: randwrite + verify, mixed with flush and discard"
    fio_dev --rw=randwrite --bsrange=4k-128k --verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=7
    fio_dev --rw=randrw --rwmixread=40 --bs=4k --fsync=8 --number_ios=1500 \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --offset=24M
    fio_dev --rw=randtrim --bs=64k --number_ios=64 --offset=24M
    lines=$(wc -l </work/daemon.err)
    down_device "$name"
    no_ublk_devices
    by=$(tail -n +$((lines + 1)) /work/daemon.err | grep 'queues stopped' | sed -n 's/.*by_thread=\[\([0-9, ]*\)\].*/\1/p')
    echo "requests by thread: [$by]"
    [[ $by =~ ^([1-9][0-9]*),\ ([1-9][0-9]*)$ ]] || fail "$name: not both threads served requests: [$by]"
    step "$name: verify after down and up"
    up_device "/work/$name.toml"
    fio_dev --rw=randwrite --bsrange=4k-128k --verify=crc32c --verify_only --randseed=7
    down_device "$name"
    no_ublk_devices
}

if [[ $several == yes ]]; then
    export UBLK_STACK_QUEUE_THREADS=2
    ublk-stack features | grep -Eq '^PER_IO_DAEMON +13 +yes +yes$' || { ublk-stack features; fail "features does not say PER_IO_DAEMON used"; }
    serve tzc zero-copy
    serve ttmpfs zero-copy
    grep 'queues stopped' /work/daemon.err | tail -2 | grep -Eq 'user_copied=[1-9]' ||
        fail "ttmpfs: no request went by user copy with two threads"
    export UBLK_STACK_ZERO_COPY=off
    serve ttmpfs copy
    unset UBLK_STACK_ZERO_COPY

    step "kill -9 under a verifying fio, then up recovers with two threads"
    up_device /work/tzc.toml
    fio --name=k --filename="$DEV" --ioengine=io_uring --direct=1 --iodepth=16 \
        --rw=randwrite --bs=4k --size=24M --loops=4 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        >/work/fio-kill.out 2>&1 &
    fio_pid=$!
    sleep 1
    kill -0 "$fio_pid" || { cat /work/fio-kill.out; fail "fio ended before the kill"; }
    kill -9 "$DAEMON_PID"
    wait "$DAEMON_PID" || true
    sleep 1
    [[ -b $DEV ]] || fail "$DEV went away after the daemon was killed"
    up_device /work/tzc.toml
    [[ $READY == *"recovered)" ]] || fail "not recovered: $READY"
    two_threads
    fio_ends_clean "$fio_pid" /work/fio-kill.out "the recovery"

    step "upgrade under a verifying fio: new pid, $DEV stays, no error"
    fio --name=u --filename="$DEV" --ioengine=io_uring --direct=1 --iodepth=16 \
        --rw=randwrite --bs=4k --size=24M --loops=2 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        >/work/fio-upgrade.out 2>&1 &
    fio_pid=$!
    watch_device
    sleep 1
    kill -0 "$fio_pid" || { cat /work/fio-upgrade.out; fail "fio ended before the upgrade"; }
    old_pid=$DAEMON_PID
    ublk-stack upgrade tzc >/work/upgrade.out 2>&1 || { cat /work/upgrade.out; fail "upgrade failed"; }
    cat /work/upgrade.out
    save_status tzc
    new_pid=$(grep -o '"pid":[0-9]*' /work/status.json | head -1 | cut -d: -f2)
    [[ -n $new_pid && $new_pid != "$old_pid" ]] || { cat /work/status.json; fail "status still shows pid $new_pid"; }
    grep -q '"PER_IO_DAEMON"' /work/status.json || { cat /work/status.json; fail "upgraded device has one thread per queue"; }
    fio_ends_clean "$fio_pid" /work/fio-upgrade.out "the upgrade"
    wait "$old_pid" || fail "the old daemon exited $?"
    device_stayed "during the upgrade"
    DAEMON_PID=$new_pid
    two_threads
    ublk-stack down tzc || fail "down after the upgrade"
    wait_gone "$DAEMON_PID"
    unset UBLK_STACK_QUEUE_THREADS
    for i in $(seq 1 50); do [[ -e /dev/ublkc0 || -e /dev/ublkb0 ]] || break; sleep 0.1; done
    no_ublk_devices
else
    step "on 6.12: two threads per queue are refused, naming the kernel needed"
    if UBLK_STACK_QUEUE_THREADS=2 ublk-stack up /work/tzc.toml >/work/refused.out 2>&1; then
        fail "up with UBLK_STACK_QUEUE_THREADS=2 succeeded on 6.12"
    fi
    cat /work/refused.out
    grep -q 'UBLK_F_PER_IO_DAEMON, Linux 6.16 or later' /work/refused.out || fail "no kernel version named"
    no_ublk_devices
    UBLK_STACK_QUEUE_THREADS=2 ublk-stack features | grep -Eq '^PER_IO_DAEMON +13 +- +-$' ||
        fail "features does not say PER_IO_DAEMON is neither offered nor used on 6.12"
fi
if grep -q 'refused to commit\|request on a tag that is not armed' /work/daemon.err; then
    cat /work/daemon.err
    fail "the kernel and the queue threads disagreed on a tag"
fi
umount /work/tmp
drop_scratch_ext4
step "ok"
