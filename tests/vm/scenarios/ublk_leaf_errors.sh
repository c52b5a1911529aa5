# Errors from a leaf reach the application, without a hang or a crash:
#  - EIO: a `disk` leaf on another ublk device whose daemon is killed under load
#    (the kernel fails that device's in-flight and queued requests with EIO);
#  - ENOSPC: a `file` leaf on a tmpfs too small for it, for 1 MiB writes and
#    for a 4 KiB one (copied into the file's mapped pages).
# The daemon keeps serving and counts the errors; `down` still works.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

cat >/work/lower.toml <<'TOML'
version = 1
[device]
name = "lower"
top = "ram"
queues = 1
[layers.ram]
type = "memory"
size = "64MiB"
TOML

step "lower device (memory) and an upper device with a disk leaf on it"
up_device /work/lower.toml
lower_dev=$DEV lower_pid=$DAEMON_PID
cat >/work/upper.toml <<TOML
version = 1
[device]
name = "upper"
top = "d"
queues = 1
[layers.d]
type = "disk"
path = "$lower_dev"
TOML
up_device /work/upper.toml
dd if=/dev/urandom of="$DEV" bs=64k count=16 oflag=direct status=none
dd if="$DEV" of=/dev/null bs=64k count=16 iflag=direct status=none

step "fio reads the upper device while the lower daemon is killed"
fio --name=reader --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randread \
    --bs=4k --iodepth=32 --time_based --runtime=120 >/work/fio.out 2>&1 &
fio_pid=$!
sleep 2
kill -0 "$fio_pid" || { cat /work/fio.out; fail "fio ended before the fault"; }
kill -9 "$lower_pid"
for i in $(seq 1 300); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$fio_pid" 2>/dev/null && fail "fio still running 30 s after its leaf died (hang)"
rc=0
wait "$fio_pid" || rc=$?
grep -E 'err=|error' /work/fio.out | head -5
((rc != 0)) || fail "fio saw no error"
grep -q 'Input/output error' /work/fio.out || fail "fio's error is not EIO"
for i in $(seq 1 100); do [[ -b $lower_dev ]] || break; sleep 0.1; done
[[ ! -b $lower_dev ]] || fail "$lower_dev still there 10 s after its daemon was killed"

kill -0 "$DAEMON_PID" || fail "upper daemon died"
ublk-stack status upper
ublk-stack status upper --json | grep -q '"errors":[1-9]' || fail "errors not counted"

step "down: the final flush fails on the dead leaf, said loudly, device removed anyway"
rc=0
ublk-stack down upper 2>/work/down.err || rc=$?
cat /work/down.err
((rc != 0)) || fail "down reported success although the leaf cannot flush"
grep -q "flushing the stack: Input/output error" /work/down.err || fail "down does not name the flush error"
rc=0
wait "$DAEMON_PID" || rc=$?
((rc == 1)) || fail "daemon exited $rc, expected 1"
[[ ! -e $DEV && ! -e /dev/ublkc${DEV#/dev/ublkb} ]] || fail "upper device left behind"

step "ENOSPC from a file leaf on a full tmpfs"
mkdir -p /work/small
mount -t tmpfs -o size=8M small /work/small
cat >/work/small.toml <<'TOML'
version = 1
[device]
name = "small"
top = "f"
queues = 1
[layers.f]
type = "file"
path = "small/f.img"
size = "64MiB"
create = true
TOML
up_device /work/small.toml
dd if=/dev/urandom of="$DEV" bs=1M count=4 oflag=direct status=none
rc=0
out=$(timeout 30 dd if=/dev/urandom of="$DEV" bs=1M count=32 oflag=direct 2>&1) || rc=$?
((rc != 124)) || fail "write to a full leaf hung"
grep -q "No space left on device" <<<"$out" || fail "expected ENOSPC, got: $out"
dd if="$DEV" of=/dev/null bs=1M count=4 iflag=direct status=none || fail "reads fail after ENOSPC"
# A 4 KiB write is copied into the file's mapped pages (user copy): a page
# the full tmpfs cannot give is ENOSPC too, not a generic I/O error.
rc=0
out=$(timeout 30 dd if=/dev/urandom of="$DEV" bs=4k count=1 seek=15000 oflag=direct conv=notrunc 2>&1) || rc=$?
((rc != 124)) || fail "a 4 KiB write to a full leaf hung"
grep -q "No space left on device" <<<"$out" || fail "4 KiB write: expected ENOSPC, got: $out"
down_device small
umount /work/small
# The next `up` deleted the killed lower daemon's leftover char device.
no_ublk_devices
step "ok"
