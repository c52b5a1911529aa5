# Crash recovery: ext4 on the device, fio writing and verifying (crc32c) a file
# in it; kill -9 the daemon in the middle. The kernel keeps /dev/ublkbN and holds
# the I/O; an `up` with another size is refused without touching it; an `up` with
# the same config takes it over ("recovered"), fio finishes without a single
# error, and e2fsck finds the filesystem clean. `down` then removes everything.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

cat >/work/r.toml <<'TOML'
version = 1
[device]
name = "rec"
top = "f"
queues = 2
[layers.f]
type = "file"
path = "rec.img"
size = "512MiB"
create = true
TOML
# Same name, other size: must be refused while the first device waits.
sed -e 's/512MiB/1GiB/' -e 's/rec.img/rec-big.img/' /work/r.toml >/work/r-big.toml

step "up, ext4, fio verify running"
up_device /work/r.toml
[[ $READY == *"ready (512 MiB, "*" queues)" ]] || fail "unexpected ready line: $READY"
[[ -f /run/ublk-stack/rec.device ]] || fail "no device record (is user recovery offered?)"
mkfs.ext4 -q "$DEV"
mkdir -p /mnt/r
mount -t ext4 "$DEV" /mnt/r
# At most 2000 IOPS: the 24,576 writes take 12 s or more however fast the
# host is, so fio is still writing when the daemon is killed at 5 s (unbounded,
# a fast host finished them in 3 s).
fio --name=verify --filename=/mnt/r/data --size=96M --ioengine=io_uring --direct=1 \
    --rw=randwrite --bs=4k --iodepth=16 --rate_iops=2000 \
    --verify=crc32c --do_verify=1 --verify_fatal=1 \
    >/work/fio.out 2>&1 &
fio_pid=$!
sleep 5
kill -0 "$fio_pid" || { cat /work/fio.out; fail "fio ended before the kill"; }

step "kill -9 the daemon: the device stays, fio waits"
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" || true
sleep 2
[[ -b $DEV ]] || fail "$DEV went away after the daemon was killed"
kill -0 "$fio_pid" 2>/dev/null || { cat /work/fio.out; fail "fio ended while the daemon was dead"; }

step "up with another size is refused"
rc=0
ublk-stack up /work/r-big.toml >/work/big.out 2>&1 || rc=$?
cat /work/big.out
((rc == 1)) || fail "up with another size exited $rc"
grep -q 'refusing to recover' /work/big.out || fail "no clear refusal"
kill -0 "$fio_pid" 2>/dev/null || { cat /work/fio.out; fail "fio ended after the refused up"; }

step "up with the same config recovers"
up_device /work/r.toml
[[ $READY == "rec: $DEV ready (512 MiB, "*" queues, recovered)" ]] ||
    fail "unexpected ready line after recovery: $READY"
rc=0
for i in $(seq 1 2400); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$fio_pid" 2>/dev/null && fail "fio still running 240 s after recovery"
wait "$fio_pid" || rc=$?
cat /work/fio.out
((rc == 0)) || fail "fio exited $rc"
grep -q 'err= 0' /work/fio.out || fail "fio reported errors"
if grep -qiE 'verify: bad|crc32c: verify failed|Input/output error' /work/fio.out; then
    fail "fio saw bad data or I/O errors"
fi
if dmesg | grep -E 'ext4.*(error|Remounting)|I/O error'; then
    fail "the kernel logged errors"
fi

step "umount, e2fsck clean, down removes everything"
umount /mnt/r
e2fsck -fn "$DEV"
down_device rec
no_ublk_devices
[[ ! -e /run/ublk-stack/rec.device ]] || fail "device record left behind"
[[ ! -e /run/ublk-stack/rec.sock ]] || fail "control socket left behind"
step "ok"
