# ext4 on crypt over compress over a mirror of two tmpfs files: mkfs, a tree
# of files, e2fsck clean, checksums match after a remount and after down/up,
# and the legs stay identical.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
head -c 32 /dev/urandom >/work/secure.key
chmod 600 /work/secure.key
cat >/work/secure.toml <<'TOML'
version = 1

[device]
name = "secure1"
top = "crypt"
queues = 2

[layers.crypt]
type = "crypt"
over = "lz4"
key_file = "secure.key"

[layers.lz4]
type = "compress"
over = "mirror"

[layers.mirror]
type = "mirror"
legs = ["a", "b"]

[layers.a]
type = "file"
path = "data/a.img"
size = "256MiB"
create = true

[layers.b]
type = "file"
path = "data/b.img"
size = "256MiB"
create = true
TOML

step "up, mkfs, a tree of files"
up_device /work/secure.toml
mkfs.ext4 -q -F "$DEV"
mkdir -p /mnt/fs
mount -t ext4 "$DEV" /mnt/fs
for d in $(seq 1 6); do
    mkdir -p "/mnt/fs/dir$d"
    for f in $(seq 1 6); do
        dd if=/dev/urandom of="/mnt/fs/dir$d/bin$f" bs=4k count=$((d * f)) status=none
        seq 1 $((d * f * 500)) >"/mnt/fs/dir$d/text$f"
    done
done
(cd /mnt/fs && find . -type f -print0 | sort -z | xargs -0 sha256sum) >/work/sums
umount /mnt/fs

step "e2fsck clean, remount, checksums match"
e2fsck -fn "$DEV"
mount -t ext4 "$DEV" /mnt/fs
(cd /mnt/fs && sha256sum -c --quiet /work/sums) || fail "checksums differ after remount"
umount /mnt/fs
ublk-stack status secure1

step "down and up again: still all there"
down_device secure1
# Each leg starts with the mirror's 12 KiB of metadata, which names the leg.
[[ $(tail -c +12289 /work/data/a.img | sha256sum) == $(tail -c +12289 /work/data/b.img | sha256sum) ]] ||
    fail "mirror legs differ"
up_device /work/secure.toml
e2fsck -fn "$DEV"
mount -t ext4 "$DEV" /mnt/fs
(cd /mnt/fs && sha256sum -c --quiet /work/sums) || fail "checksums differ after down/up"
umount /mnt/fs
down_device secure1
no_ublk_devices
step "ok"
