# ext4 on a mirror of two file legs on tmpfs: mkfs, a tree of files, e2fsck clean,
# checksums match after a remount, `down` leaves the two legs byte-identical and
# no ublk device behind. Also checks `list` and `status` on the running device.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
cat >/work/mirror.toml <<'TOML'
version = 1

[device]
name = "mirror0"
top = "mirror"
queues = 2

[layers.mirror]
type = "mirror"
legs = ["a", "b"]

[layers.a]
type = "file"
path = "data/mirror0-a.img"
size = "256MiB"
create = true

[layers.b]
type = "file"
path = "data/mirror0-b.img"
size = "256MiB"
create = true
TOML

step "up"
up_device /work/mirror.toml
# Each leg keeps 12 KiB of mirror metadata (docs/formats/mirror.md).
[[ $READY == "mirror0: /dev/ublkb"*" ready (256.0 MiB, 2 queues)" ]] || fail "unexpected ready line: $READY"
[[ $(blockdev --getsize64 "$DEV") == $(((256 << 20) - 12288)) ]] || fail "wrong size"
[[ $(stat -c %a /run/ublk-stack/mirror0.sock) == 600 ]] || fail "control socket is not mode 0600"

step "an idle daemon sleeps"
# utime + stime of the whole process, in clock ticks (100 per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$DAEMON_PID/stat"; }
before=$(cpu_ticks)
sleep 2
used=$(($(cpu_ticks) - before))
echo "idle daemon used $used ticks in 2 s"
((used < 40)) || fail "idle daemon used $used of 200 ticks in 2 s (spinning?)"

step "list and status"
ublk-stack list | tee /work/list.out
# The table's columns are padded with spaces; --json is the form for scripts.
grep -Eq "^mirror0 +$DEV +256.0 MiB +running$" /work/list.out || fail "list does not show the device"
ublk-stack list --json | tee /work/list.json
grep -q "\"path\":\"$DEV\"" /work/list.json || fail "list --json lacks the device path"
grep -q '"state":"running"' /work/list.json || fail "list --json does not say running"
ublk-stack status mirror0
ublk-stack status mirror0 --json >/work/status.json
grep -q '"type":"mirror"' /work/status.json || fail "status --json lacks the mirror"

step "mkfs, a tree of files, umount"
mkfs.ext4 -q -F "$DEV"
mkdir -p /mnt/fs
mount -t ext4 "$DEV" /mnt/fs
for d in $(seq 1 8); do
    mkdir -p "/mnt/fs/dir$d/sub"
    for f in $(seq 1 6); do
        dd if=/dev/urandom of="/mnt/fs/dir$d/file$f" bs=4k count=$((d * f * 3)) status=none
        dd if=/dev/urandom of="/mnt/fs/dir$d/sub/small$f" bs=$((f * 100 + 1)) count=1 status=none
    done
done
dd if=/dev/urandom of=/mnt/fs/big bs=1M count=48 status=none
(cd /mnt/fs && find . -type f -print0 | sort -z | xargs -0 sha256sum) >/work/sums
umount /mnt/fs

step "e2fsck clean"
e2fsck -fn "$DEV"

step "remount, checksums match"
mount -t ext4 "$DEV" /mnt/fs
(cd /mnt/fs && sha256sum -c --quiet /work/sums) || fail "checksums differ after remount"
umount /mnt/fs

step "status counted the traffic"
ublk-stack status mirror0 --json >/work/status.json
grep -q '"writes":0,' /work/status.json && fail "a layer counted no writes"

step "down"
down_device mirror0
no_ublk_devices
[[ ! -e /run/ublk-stack/mirror0.sock ]] || fail "control socket left behind"
# The data after each leg's metadata (its superblock names the leg's index).
[[ $(tail -c +12289 /work/data/mirror0-a.img | sha256sum) == $(tail -c +12289 /work/data/mirror0-b.img | sha256sum) ]] ||
    fail "mirror legs differ after down"
step "ok"
