#!/bin/bash
# The VM itself works: ublk_drv is loaded, a loop device carries an ext4 file
# system through mkfs, mount, write, fsck and remount, and fio verifies data.
. /vmtest/lib.sh

step "ublk_drv is loaded"
[[ -c /dev/ublk-control ]] || fail "/dev/ublk-control missing after insmod"
grep -qw ublk_drv /proc/modules || fail "ublk_drv not in /proc/modules"

step "the static ublk-stack runs"
if [[ -x /bin/ublk-stack ]]; then
    ublk-stack --help >/dev/null
else
    echo "no /bin/ublk-stack in this VM (run.sh was given -)"
fi

step "ext4 on a loop device backed by a tmpfs file"
truncate -s 256M /work/disk.img
dev=$(losetup -f --show /work/disk.img)
mkfs.ext4 -q -F "$dev"
mkdir -p /mnt/fs
mount -t ext4 "$dev" /mnt/fs
dd if=/dev/urandom of=/work/data bs=1M count=32 status=none
cp /work/data /mnt/fs/data
want=$(sha256sum </work/data)
umount /mnt/fs
e2fsck -fn "$dev"
mount -t ext4 "$dev" /mnt/fs
[[ $(sha256sum </mnt/fs/data) == "$want" ]] || fail "file read back differs after remount"
umount /mnt/fs

step "fio writes and verifies the loop device"
fio --name=verify --filename="$dev" --ioengine=io_uring --direct=1 \
    --rw=randwrite --bs=4k --iodepth=16 --size=64M \
    --verify=crc32c --do_verify=1 --verify_fatal=1
losetup -d "$dev"
step "smoke ok"
