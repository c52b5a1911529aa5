# Upgrade and crash of a stack with a write-back cache (over a file leaf).
# On 7.3 (UBLK_F_QUIESCE): the device has user recovery; ext4 on it, fio
# writing and verifying (crc32c) a file, two upgrades (to a copy of the binary
# and back) while /dev/ublkbN never disappears: the old daemon writes the cache
# back before it hands over, fio ends without an error, e2fsck finds the
# filesystem clean. Then writes left dirty in the cache and kill -9: the next
# `up` does not resume the device; it says why, and a reader held by the kernel
# gets EIO; the `up` after that makes the device anew. The same kill -9 on a
# stack without a cache is still recovered, its data intact.
# On 6.12: upgrade is refused as before, the cache stack has no recovery, and
# after kill -9 its I/O fails at once.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
cat >/work/c.toml <<'TOML'
version = 1
[device]
name = "cup"
top = "wb"
queues = 2
[layers.wb]
type = "cache"
over = "f"
capacity = "64MiB"
mode = "write-back"
[layers.f]
type = "file"
path = "data/cup.img"
size = "256MiB"
create = true
TOML

status_json() { ublk-stack status cup --json; }
status_pid() { status_json | grep -o '"pid":[0-9]*' | cut -d: -f2; }
dirty_bytes() { status_json | grep -o '"dirty_bytes":[0-9]*' | cut -d: -f2; }

MARK=/run/ublk-stack/cup.handover

step "up a write-back cache stack"
up_device /work/c.toml
OLD_PID=$DAEMON_PID
if [[ $(uname -r) == 6.12* ]]; then
    [[ ! -e /run/ublk-stack/cup.device ]] || fail "a cache stack has recovery without QUIESCE"
else
    [[ -f /run/ublk-stack/cup.device ]] || fail "no device record: the cache stack has no recovery"
fi

if [[ $(uname -r) == 6.12* ]]; then
    step "6.12: upgrade is refused, naming the kernel needed; nothing changes"
    rc=0
    ublk-stack upgrade cup >/work/upgrade.out 2>&1 || rc=$?
    cat /work/upgrade.out
    ((rc == 1)) || fail "upgrade exited $rc on a kernel without QUIESCE"
    grep -q 'UBLK_F_QUIESCE.*Linux 6.16 or later' /work/upgrade.out || fail "no kernel named"
    [[ $(status_pid) == "$OLD_PID" ]] || fail "the device changed hands"
else
    step "ext4, fio verify running, /dev/ublkbN watched"
    mkfs.ext4 -q "$DEV"
    mkdir -p /mnt/c
    mount -t ext4 "$DEV" /mnt/c
    fio --name=verify --filename=/mnt/c/data --size=48M --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        >/work/fio.out 2>&1 &
    fio_pid=$!
    watch_device
    sleep 3

    step "upgrade to a copy of the binary, then back, while fio runs"
    cp /bin/ublk-stack /work/ublk-stack-new
    for binary in /work/ublk-stack-new /bin/ublk-stack; do
        kill -0 "$fio_pid" || { cat /work/fio.out; fail "fio ended before the upgrade"; }
        echo "dirty before the upgrade: $(dirty_bytes) bytes"
        start=$(date +%s%N)
        ublk-stack upgrade cup --binary "$binary" | tee /work/upgrade.out ||
            { cat /work/daemon.err; fail "upgrade to $binary failed"; }
        echo "upgrade took $((($(date +%s%N) - start) / 1000000)) ms"
        wait_gone "$OLD_PID"
        NEW_PID=$(status_pid)
        [[ -n $NEW_PID && $NEW_PID != "$OLD_PID" ]] || fail "status still shows pid $NEW_PID"
        [[ $(readlink "/proc/$NEW_PID/exe") == "$binary" ]] ||
            fail "the new daemon runs $(readlink "/proc/$NEW_PID/exe")"
        [[ ! -e $MARK ]] || fail "the clean-handover mark was not consumed"
        OLD_PID=$NEW_PID
    done

    step "fio ends without an error; /dev/ublkbN never went away; e2fsck clean"
    for i in $(seq 1 2400); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$fio_pid" 2>/dev/null && fail "fio still running after 240 s"
    rc=0
    wait "$fio_pid" || rc=$?
    cat /work/fio.out
    ((rc == 0)) || fail "fio exited $rc"
    grep -q 'err= 0' /work/fio.out || fail "fio reported errors"
    if grep -qiE 'verify: bad|crc32c: verify failed|Input/output error' /work/fio.out; then
        fail "fio saw bad data or I/O errors"
    fi
    device_stayed
    if dmesg | grep -E 'ext4.*(error|Remounting)|I/O error'; then
        fail "the kernel logged errors"
    fi
    umount /mnt/c
    e2fsck -fn "$DEV"
fi

step "writes left dirty in the cache, then kill -9"
dd if=/dev/urandom of=/work/dirty bs=1M count=4 status=none
dd if=/work/dirty of="$DEV" bs=1M oflag=direct status=none
dirty=$(dirty_bytes)
echo "dirty: $dirty bytes"
((dirty > 0)) || fail "nothing dirty in the cache"
kill -9 "$OLD_PID"
wait "$OLD_PID" 2>/dev/null || true
wait_gone "$OLD_PID"
# A reader that the kernel holds (7.3) or fails at once (6.12).
dd if="$DEV" of=/dev/null bs=4k count=1 iflag=direct 2>/work/reader.err &
reader=$!

if [[ $(uname -r) != 6.12* ]]; then
    step "up does not resume the device: it says why and fails the held reader"
    sleep 1
    kill -0 "$reader" 2>/dev/null || fail "the reader was not held for recovery"
    rc=0
    timeout 60 ublk-stack up /work/c.toml >/work/up.out 2>&1 || rc=$?
    cat /work/up.out
    ((rc == 1)) || fail "up after the crash exited $rc"
    grep -q "$DEV is not resumed" /work/up.out || fail "no reason given"
    grep -q 'cache layer "wb"' /work/up.out || fail "the cache is not named"
    grep -q 'fsck' /work/up.out || fail "no advice given"
    [[ ! -e /run/ublk-stack/cup.device ]] || fail "device record left behind"
fi
rc=0
for i in $(seq 1 300); do kill -0 "$reader" 2>/dev/null || break; sleep 0.1; done
wait "$reader" || rc=$?
cat /work/reader.err
((rc != 0)) || fail "the read after the crash succeeded"
grep -q 'Input/output error\|No such' /work/reader.err || fail "the reader did not get EIO"
for i in $(seq 1 100); do [[ -b $DEV ]] || break; sleep 0.1; done
[[ ! -b $DEV ]] || fail "$DEV is still there"

step "the next up makes the device anew"
up_device /work/c.toml
[[ $READY != *recovered* ]] || fail "the device was recovered: $READY"
down_device cup
no_ublk_devices
[[ ! -e $MARK ]] || fail "clean-handover mark left behind"

step "kill -9 on a stack without a cache is still recovered"
cat >/work/f.toml <<'TOML'
version = 1
[device]
name = "plain"
top = "f"
[layers.f]
type = "file"
path = "data/plain.img"
size = "64MiB"
create = true
TOML
up_device /work/f.toml
[[ -f /run/ublk-stack/plain.device ]] || fail "no device record for the plain stack"
dd if=/work/dirty of="$DEV" bs=1M oflag=direct status=none
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
[[ -b $DEV ]] || fail "$DEV went away after the daemon was killed"
up_device /work/f.toml
[[ $READY == "plain: $DEV ready ("*", recovered)" ]] || fail "not recovered: $READY"
dd if="$DEV" of=/work/read-back bs=1M count=4 iflag=direct status=none
cmp /work/read-back /work/dirty || fail "data lost"
down_device plain
no_ublk_devices
step "ok"
