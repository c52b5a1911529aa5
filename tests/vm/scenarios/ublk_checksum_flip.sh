# One byte flipped on the leaf of a checksum layer, behind the daemon's back:
# a reader of exactly that block gets EIO, every other block reads back intact,
# and `status` counts the mismatch.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
cat >/work/sum.toml <<'TOML'
version = 1

[device]
name = "sum0"
top = "sum"

[layers.sum]
type = "checksum"
over = "leaf"

[layers.leaf]
type = "file"
path = "data/sum0.img"
size = "64MiB"
create = true
TOML

step "write 64 blocks, each starting with its own tag"
up_device /work/sum.toml
for i in $(seq 0 63); do
    { printf 'BLOCK-%06d-' "$i"; head -c 4083 /dev/urandom; } >/work/block.$i
    dd if=/work/block.$i of="$DEV" bs=4096 seek="$i" oflag=direct conv=notrunc status=none
done
down_device sum0

step "flip one byte of block 17 on the leaf"
at=$(checksum_block_at 17)
[[ $(dd if=/work/data/sum0.img bs=1 skip="$at" count=13 status=none) == BLOCK-000017- ]] ||
    fail "block 17 is not where the format puts it"
byte=$(dd if=/work/data/sum0.img bs=1 skip=$((at + 2000)) count=1 status=none | od -An -tu1 | tr -d ' ')
printf "$(printf '\\%03o' $(((byte + 1) % 256)))" |
    dd of=/work/data/sum0.img bs=1 seek=$((at + 2000)) conv=notrunc status=none

step "block 17 reads as EIO, the others intact"
up_device /work/sum.toml
for i in $(seq 0 63); do
    if ((i == 17)); then
        if dd if="$DEV" of=/work/out bs=4096 skip=17 count=1 iflag=direct status=none 2>/work/dd.err; then
            fail "block 17 read without an error"
        fi
        grep -qi "input/output error" /work/dd.err || { cat /work/dd.err; fail "block 17 failed without EIO"; }
    else
        dd if="$DEV" of=/work/out bs=4096 skip="$i" count=1 iflag=direct status=none
        cmp -s /work/out /work/block.$i || fail "block $i reads back wrong"
    fi
done
ublk-stack status sum0 --json >/work/status.json
grep -q '"mismatches":1[,}]' /work/status.json || { cat /work/status.json; fail "status does not count the mismatch"; }
down_device sum0
no_ublk_devices
step "ok"
