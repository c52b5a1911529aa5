# Random blocks of one leg corrupted behind the daemon's back: every read still
# returns the right data, `scrub` repairs them all, and a second scrub is clean.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
cat >/work/m.toml <<'TOML'
version = 1

[device]
name = "scrub0"
top = "m"

[layers.m]
type = "mirror"
legs = ["c0", "c1"]

[layers.c0]
type = "checksum"
over = "l0"

[layers.c1]
type = "checksum"
over = "l1"

[layers.l0]
type = "file"
path = "data/l0.img"
size = "64MiB"
create = true

[layers.l1]
type = "file"
path = "data/l1.img"
size = "64MiB"
create = true
TOML

step "write 16 MiB"
up_device /work/m.toml
head -c $((16 << 20)) /dev/urandom >/work/data.bin
dd if=/work/data.bin of="$DEV" bs=1M oflag=direct status=none
down_device scrub0

step "corrupt 20 blocks of leg 0"
# docs/formats/checksum.md and mirror.md: checksum superblock and table, then
# the checksum's data blocks, the first 3 of which hold the mirror's metadata.
for i in $(seq 1 20); do
    block=$((i * 197 % 4096))
    at=$(checksum_block_at $((3 + block)))
    printf 'CORRUPT' | dd of=/work/data/l0.img bs=1 seek=$((at + 100)) conv=notrunc status=none
done

step "scrub finds and repairs all 20"
up_device /work/m.toml
ublk-stack scrub scrub0 | tee /work/scrub1.out
grep -q ": 20 repaired, 0 mismatched copies rewritten, 0 unrepairable" /work/scrub1.out ||
    fail "scrub did not repair exactly the 20 corrupted blocks"

step "every read is right, a second scrub is clean"
dd if="$DEV" of=/work/back.bin bs=1M count=16 iflag=direct status=none
cmp /work/data.bin /work/back.bin || fail "a read returned wrong data"
ublk-stack scrub scrub0 | tee /work/scrub2.out
grep -q ": 0 repaired, 0 mismatched copies rewritten, 0 unrepairable" /work/scrub2.out ||
    fail "second scrub is not clean"
down_device scrub0
no_ublk_devices
step "ok"
