# fio with crc32c verification (random writes, 4-64 KiB, iodepth 32, two jobs)
# over raid0 of two mirrors with two queues; then the data is verified again
# after down and up. Legs a and c are on tmpfs (the file leaf's synchronous
# path), b and d on ext4 over a loop device (its io_uring path).
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

truncate -s 400M /work/ext4.img
mkfs.ext4 -q -F /work/ext4.img || fail "mkfs.ext4"
ext4_loop=$(losetup -f --show /work/ext4.img)
mkdir -p /work/ext4
mount -t ext4 "$ext4_loop" /work/ext4 || fail "mount ext4"

cat >/work/raid.toml <<'TOML'
version = 1

[device]
name = "raid0m"
top = "stripe"
queues = 2
queue_depth = 64

[layers.stripe]
type = "raid0"
stripes = ["m1", "m2"]
chunk = "64KiB"

[layers.m1]
type = "mirror"
legs = ["a", "b"]

[layers.m2]
type = "mirror"
legs = ["c", "d"]

[layers.a]
type = "file"
path = "a.img"
size = "128MiB"
create = true

[layers.b]
type = "file"
path = "ext4/b.img"
size = "128MiB"
create = true

[layers.c]
type = "file"
path = "c.img"
size = "128MiB"
create = true

[layers.d]
type = "file"
path = "ext4/d.img"
size = "128MiB"
create = true
TOML

fio_job() { # extra fio arguments
    fio --name=verify --filename="$DEV" --ioengine=io_uring --direct=1 \
        --rw=randwrite --bsrange=4k-64k --iodepth=32 --numjobs=2 \
        --size=96M --offset_increment=128M --verify=crc32c --verify_fatal=1 \
        --group_reporting "$@" >/work/fio.out 2>&1 || { cat /work/fio.out; fail "fio $*"; }
    grep -E 'err=|READ:|WRITE:|verify' /work/fio.out | head -8
    grep -q 'err= 0' /work/fio.out || { cat /work/fio.out; fail "fio reported errors"; }
}

step "up"
up_device /work/raid.toml
# Each mirror leg keeps 12 KiB of metadata, so each mirror loses a 64 KiB chunk.
[[ $(blockdev --getsize64 "$DEV") == $(((256 << 20) - (128 << 10))) ]] || fail "wrong size"

ublk-stack status raid0m >/work/status.txt || fail "status"
for leaf in a:sync b:io_uring c:sync d:io_uring; do
    grep -Eq "^ +${leaf%%:*} +file .* io=${leaf#*:} " /work/status.txt ||
        { cat /work/status.txt; fail "leaf ${leaf%%:*} does not use ${leaf#*:} I/O"; }
done
step "fio randwrite + verify"
fio_job --do_verify=1

step "down, up, verify again"
down_device raid0m
no_ublk_devices
up_device /work/raid.toml
fio_job --verify_only
# The data after each leg's 12 KiB of mirror metadata.
[[ $(tail -c +12289 a.img | sha256sum) == $(tail -c +12289 ext4/b.img | sha256sum) ]] || fail "legs of m1 differ"
[[ $(tail -c +12289 c.img | sha256sum) == $(tail -c +12289 ext4/d.img | sha256sum) ]] || fail "legs of m2 differ"
down_device raid0m
no_ublk_devices
umount /work/ext4
losetup -d "$ext4_loop"
step "ok"
