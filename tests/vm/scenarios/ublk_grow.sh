# Growing a running device by editing its config: checksum over a mirror of two
# created files, ext4 on it. On 7.3 (UBLK_F_UPDATE_SIZE): fio writes and
# verifies while the legs' `size` rises from 96 MiB to 192 MiB; the reload
# grows the files, the mirror, the checksum table, then the device:
# `blockdev --getsize64` shows the new size, `resize2fs` grows the mounted
# ext4, fio ends without an error, e2fsck is clean. A shrink is refused and
# changes nothing. On 6.12 the same live edit is refused naming Linux 6.14 and
# nothing changes. On both: growing through down and up serves the bigger device
# and the filesystem's data is still there. Then, on both kernels, a thin
# `compress` (64 MiB over a 16 MiB file) takes in its file grown to 40 MiB
# by a reload: the device keeps its size and holds 32 MiB of random data.
# Then its own `size` rises to 256 MiB: on 7.3 live (the map gains pages in
# the data area; `blockdev --getsize64` shows it; data written before and
# after reads back after down and up); on 6.12 the live edit is refused
# naming Linux 6.14, and up with the larger size grows it instead.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
cat >/work/g.toml <<'TOML'
version = 1
[device]
name = "grow"
top = "sum"
queues = 2
[layers.sum]
type = "checksum"
over = "m"
[layers.m]
type = "mirror"
legs = ["a", "b"]
[layers.a]
type = "file"
path = "data/a.img"
size = "96MiB"
create = true
[layers.b]
type = "file"
path = "data/b.img"
size = "96MiB"
create = true
TOML

size_of() { blockdev --getsize64 "$DEV"; }
set_legs() { sed -i "s/^size = .*/size = \"$1\"/" /work/g.toml; }

step "up at 96 MiB legs, ext4, a file of known data"
up_device /work/g.toml
small=$(size_of)
echo "size $small"
mkfs.ext4 -q "$DEV"
mkdir -p /mnt/g
mount -t ext4 "$DEV" /mnt/g
dd if=/dev/urandom of=/mnt/g/known bs=1M count=8 status=none
sum_known=$(sha256sum </mnt/g/known)

if [[ $(uname -r) == 6.12* ]]; then
    step "6.12: the live grow is refused, naming the kernel needed; nothing changes"
    set_legs 192MiB
    rc=0
    ublk-stack reload grow >/work/reload.out 2>&1 || rc=$?
    cat /work/reload.out
    ((rc != 0)) || fail "reload of a grow on 6.12 succeeded"
    grep -q 'Linux 6.14' /work/reload.out || fail "the refusal names no kernel version"
    [[ $(size_of) == "$small" ]] || fail "the device changed size"
    [[ $(stat -c %s /work/data/a.img) == $((96 << 20)) ]] || fail "a leg grew anyway"
else
    step "7.3: grow the legs to 192 MiB while fio verifies"
    fio --name=verify --filename=/mnt/g/data --size=24M --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        >/work/fio.out 2>&1 &
    fio_pid=$!
    sleep 2
    set_legs 192MiB
    ublk-stack reload grow | tee /work/reload.out || fail "reload of the grow failed"
    big=$(size_of)
    echo "size $big"
    ((big > small + (90 << 20))) || fail "the device did not grow ($small -> $big)"
    ublk-stack status grow --json | grep -q "\"size\":$big" ||
        fail "status does not show the new size"
    resize2fs "$DEV" || fail "resize2fs failed"
    df -B1 /mnt/g
    for i in $(seq 1 1200); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$fio_pid" 2>/dev/null && fail "fio still running after 120 s"
    rc=0
    wait "$fio_pid" || rc=$?
    cat /work/fio.out
    ((rc == 0)) || fail "fio exited $rc"
    grep -q 'err= 0' /work/fio.out || fail "fio reported errors"
    dd if=/dev/urandom of=/mnt/g/late bs=1M count=64 status=none || fail "cannot fill the new space"
    sync

    step "a shrink is refused and changes nothing"
    set_legs 128MiB
    rc=0
    ublk-stack reload grow >/work/reload.out 2>&1 || rc=$?
    cat /work/reload.out
    ((rc != 0)) || fail "a shrink was applied"
    grep -qi 'shrink' /work/reload.out || fail "the refusal does not say shrink"
    [[ $(size_of) == "$big" ]] || fail "the device changed size on a refused shrink"
    set_legs 192MiB
    small=$big
fi
[[ $(sha256sum </mnt/g/known) == "$sum_known" ]] || fail "known data changed"
umount /mnt/g
e2fsck -fn "$DEV" || fail "e2fsck found errors"
down_device grow

step "grow through down and up"
set_legs 256MiB
up_device /work/g.toml
grown=$(size_of)
echo "size $grown"
((grown > small + (60 << 20))) || fail "up did not grow the device ($small -> $grown)"
e2fsck -fn "$DEV" || fail "e2fsck found errors after up"
mount -t ext4 "$DEV" /mnt/g
resize2fs "$DEV" || fail "resize2fs after up failed"
[[ $(sha256sum </mnt/g/known) == "$sum_known" ]] || fail "known data changed after up"
umount /mnt/g
down_device grow
no_ublk_devices

step "a thin compress takes in its grown file; its size stays"
cat >/work/c.toml <<'TOML'
version = 1
[device]
name = "thin"
top = "c"
queues = 1
[layers.c]
type = "compress"
over = "f"
size = "64MiB"
[layers.f]
type = "file"
path = "data/c.img"
size = "16MiB"
create = true
TOML
up_device /work/c.toml
thin=$(size_of)
dd if=/dev/urandom of=/work/first bs=1M count=8 status=none
dd if=/work/first of="$DEV" bs=1M oflag=direct conv=fsync status=none || fail "cannot write 8 MiB"
sed -i 's/^size = "16MiB"/size = "40MiB"/' /work/c.toml
ublk-stack reload thin | tee /work/reload.out || fail "reload of the grown file failed"
# The folder watch may have applied the edit first; then the command finds
# nothing to do and the daemon's log holds what the watch applied.
grep -q 'space below' /work/reload.out ||
    { grep -q '^thin: unchanged' /work/reload.out && grep -q 'space below' /work/daemon.err; } ||
    fail "the compress did not take in the new space"
[[ $(size_of) == "$thin" ]] || fail "the compress device changed size"
dd if=/dev/urandom of=/work/second bs=1M count=24 status=none
dd if=/work/second of="$DEV" bs=1M seek=8 oflag=direct conv=fsync status=none ||
    fail "cannot write 24 MiB more after the grow"
down_device thin
up_device /work/c.toml
# (No process substitution: the guest has no /dev/fd.)
check_thin() {
    dd if="$DEV" of=/work/got bs=1M count=8 iflag=direct status=none || fail "cannot read back"
    cmp /work/got /work/first || fail "the first 8 MiB changed ($1)"
    dd if="$DEV" of=/work/got bs=1M skip=8 count=24 iflag=direct status=none ||
        fail "cannot read back"
    cmp /work/got /work/second || fail "the 24 MiB written after the grow changed ($1)"
}
check_thin "after down and up"

step "the thin compress's own size rises from 64 MiB to 256 MiB"
sed -i 's/^size = "64MiB"/size = "256MiB"/' /work/c.toml
if [[ $(uname -r) == 6.12* ]]; then
    rc=0
    ublk-stack reload thin >/work/reload.out 2>&1 || rc=$?
    cat /work/reload.out
    ((rc != 0)) || fail "reload of a compress size rise on 6.12 succeeded"
    grep -q 'Linux 6.14' /work/reload.out || fail "the refusal names no kernel version"
    [[ $(size_of) == "$thin" ]] || fail "the compress device changed size"
    down_device thin
    up_device /work/c.toml
else
    ublk-stack reload thin | tee /work/reload.out || fail "reload of the compress size failed"
    grep -q 'layers.c size' /work/reload.out || fail "the reload did not raise layers.c size"
fi
[[ $(size_of) == $((256 << 20)) ]] || fail "the compress device is $(size_of) bytes, not 256 MiB"
check_thin "after the raise"
dd if=/dev/urandom of=/work/third bs=1M count=4 status=none
dd if=/work/third of="$DEV" bs=1M seek=200 oflag=direct conv=fsync status=none ||
    fail "cannot write past the old end"
down_device thin
up_device /work/c.toml
[[ $(size_of) == $((256 << 20)) ]] || fail "up did not keep 256 MiB"
check_thin "raised, down and up"
dd if="$DEV" of=/work/got bs=1M skip=200 count=4 iflag=direct status=none || fail "cannot read back"
cmp /work/got /work/third || fail "the 4 MiB past the old end changed"
dd if="$DEV" of=/work/got bs=1M skip=64 count=1 iflag=direct status=none || fail "cannot read back"
dd if=/dev/zero of=/work/zeros bs=1M count=1 status=none
cmp /work/got /work/zeros || fail "never-written space past the old end is not zeros"
down_device thin
no_ublk_devices
step "ok"
