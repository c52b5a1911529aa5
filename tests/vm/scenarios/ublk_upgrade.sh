# Zero-downtime upgrade: ext4 on a mirror, fio writing and verifying (crc32c) a
# file in it, and `ublk-stack upgrade` in the middle. On 7.3 (UBLK_F_QUIESCE) a
# binary that fails `validate` is refused with the old daemon serving on; the
# upgrade to a copy of the binary hands the device to a new process (status
# shows its pid) while /dev/ublkbN never disappears, and back again; a binary
# that validates but dies in `up` leaves the device held, and the `up` the
# command prints takes it over; fio ends without an error. On 6.12 the command refuses, naming the kernel needed, and nothing
# changes. Either way e2fsck finds the filesystem clean and `down` removes all.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
cat >/work/u.toml <<'TOML'
version = 1
[device]
name = "upg"
top = "m"
queues = 2
[layers.m]
type = "mirror"
legs = ["a", "b"]
[layers.a]
type = "file"
path = "data/upg-a.img"
size = "256MiB"
create = true
[layers.b]
type = "file"
path = "data/upg-b.img"
size = "256MiB"
create = true
TOML

status_pid() {
    ublk-stack status upg --json | grep -o '"pid":[0-9]*' | cut -d: -f2
}

step "up, ext4, fio verify running, /dev/ublkbN watched"
up_device /work/u.toml
OLD_PID=$DAEMON_PID
[[ $(status_pid) == "$OLD_PID" ]] || fail "status shows pid $(status_pid), not $OLD_PID"
mkfs.ext4 -q "$DEV"
mkdir -p /mnt/u
mount -t ext4 "$DEV" /mnt/u
fio --name=verify --filename=/mnt/u/data --size=96M --ioengine=io_uring --direct=1 \
    --rw=randwrite --bs=4k --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
    >/work/fio.out 2>&1 &
fio_pid=$!
watch_device
sleep 3
kill -0 "$fio_pid" || { cat /work/fio.out; fail "fio ended before the upgrade"; }

if [[ $(uname -r) == 6.12* ]]; then
    step "6.12: upgrade is refused, naming the kernel needed; nothing changes"
    rc=0
    ublk-stack upgrade upg >/work/upgrade.out 2>&1 || rc=$?
    cat /work/upgrade.out
    ((rc == 1)) || fail "upgrade exited $rc on a kernel without QUIESCE"
    grep -q 'UBLK_F_QUIESCE.*Linux 6.16 or later' /work/upgrade.out || fail "no kernel named"
    [[ $(status_pid) == "$OLD_PID" ]] || fail "the device changed hands"
    kill -0 "$OLD_PID" || fail "the daemon exited"
    NEW_PID=$OLD_PID
else
    step "a binary that fails validate is refused; the old daemon serves on"
    printf '#!/bin/sh\necho "u.toml: unknown key frobnicate" >&2\nexit 1\n' >/work/bad-binary
    chmod +x /work/bad-binary
    for bad in /bin/false /work/bad-binary; do
        rc=0
        ublk-stack upgrade upg --binary "$bad" >/work/upgrade.out 2>&1 || rc=$?
        cat /work/upgrade.out
        ((rc == 1)) || fail "upgrade to $bad exited $rc"
        grep -q "$bad validate /work/u.toml\` failed" /work/upgrade.out || fail "no reason given"
        [[ $(status_pid) == "$OLD_PID" ]] || fail "the device changed hands"
    done
    grep -q 'unknown key frobnicate' /work/upgrade.out || fail "the binary's complaint is not relayed"
    dd if="$DEV" of=/dev/null bs=4k count=16 iflag=direct status=none || fail "the device does not serve"

    step "upgrade to a copy of the binary while fio runs"
    cp /bin/ublk-stack /work/ublk-stack-new
    kill -0 "$fio_pid" || { cat /work/fio.out; fail "fio ended before the upgrade"; }
    start=$(date +%s%N)
    ublk-stack upgrade upg --binary /work/ublk-stack-new | tee /work/upgrade.out ||
        { cat /work/daemon.err; fail "upgrade failed"; }
    echo "upgrade took $((($(date +%s%N) - start) / 1000000)) ms"
    NEW_PID=$(status_pid)
    [[ -n $NEW_PID && $NEW_PID != "$OLD_PID" ]] || fail "status still shows pid $NEW_PID"
    grep -q "served by pid $NEW_PID (/work/ublk-stack-new), taken over from pid $OLD_PID" \
        /work/upgrade.out || fail "unexpected upgrade output"
    [[ $(readlink "/proc/$NEW_PID/exe") == /work/ublk-stack-new ]] || fail "the new daemon runs $(readlink "/proc/$NEW_PID/exe")"
    rc=0
    wait "$OLD_PID" || rc=$?
    ((rc == 0)) || { cat /work/daemon.err; fail "the old daemon exited $rc"; }

    step "and back to the installed binary (the default)"
    ublk-stack upgrade upg || { cat /work/daemon.err; fail "second upgrade failed"; }
    wait_gone "$NEW_PID"
    NEW_PID=$(status_pid)
    [[ $(readlink "/proc/$NEW_PID/exe") == /bin/ublk-stack ]] || fail "the new daemon runs $(readlink "/proc/$NEW_PID/exe")"

    step "a new binary that validates but dies in up: the device stays held, the printed up serves it"
    printf '#!/bin/sh\n[ "$1" = validate ] && exec /bin/ublk-stack "$@"\necho "dies in up" >&2\nexit 3\n' \
        >/work/dies-in-up
    chmod +x /work/dies-in-up
    kill -0 "$fio_pid" || { cat /work/fio.out; fail "fio ended before the failed upgrade"; }
    rc=0
    ublk-stack upgrade upg --binary /work/dies-in-up >/work/upgrade.out 2>&1 || rc=$?
    cat /work/upgrade.out
    ((rc == 1)) || fail "upgrade to a binary that dies exited $rc"
    grep -q 'exited before it served the device' /work/upgrade.out || fail "no reason given"
    grep -q "$DEV stays with its I/O held (nothing fails meanwhile): run \`/bin/ublk-stack up /work/u.toml\` to serve it again" \
        /work/upgrade.out || fail "no instructions given"
    wait_gone "$NEW_PID"
    [[ -b $DEV ]] || fail "$DEV went away"
    up_device /work/u.toml
    [[ $READY == "upg: $DEV ready ("*", recovered)" ]] || fail "unexpected ready line: $READY"
    NEW_PID=$DAEMON_PID
    [[ $(status_pid) == "$NEW_PID" ]] || fail "status shows pid $(status_pid), not $NEW_PID"
fi

step "fio ends without an error; /dev/ublkbN never went away"
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

step "umount, e2fsck clean, down removes everything"
umount /mnt/u
e2fsck -fn "$DEV"
ublk-stack down upg || fail "down failed"
wait_gone "$NEW_PID"
if [[ $NEW_PID == "$OLD_PID" ]]; then
    rc=0
    wait "$OLD_PID" || rc=$?
    ((rc == 0)) || fail "daemon exited $rc after down"
fi
no_ublk_devices
[[ ! -e /run/ublk-stack/upg.device ]] || fail "device record left behind"
[[ ! -e /run/ublk-stack/upg.sock ]] || fail "control socket left behind"
# Past each leg's 12 KiB of mirror metadata (docs/formats/mirror.md).
[[ $(tail -c +12289 /work/data/upg-a.img | sha256sum) == $(tail -c +12289 /work/data/upg-b.img | sha256sum) ]] ||
    fail "the mirror's legs differ"
step "ok"
