# Zero copy: on 7.3 (AUTO_BUF_REG) a file leaf, a mirror of two files and a
# raid0 of two files (requests split at chunk edges, so leaves use fixed
# buffers at offsets) say data path `zero-copy` and take requests of up to
# 1 MiB (512 KiB in copy mode), and fio random writes and 1 MiB writes with
# verification pass; the mirror's legs come out byte-identical. The daemon's
# own registration (UBLK_STACK_ZERO_COPY=explicit, the SUPPORT_ZERO_COPY
# path) passes the same check. A checksum over a file stays in copy mode. On
# 6.12 (no zero copy) the same configs run in copy mode, and asking for zero
# copy is refused with the kernel version it needs. A buffered file on tmpfs
# as the top takes zero copy on 7.3 with USER_COPY for requests up to 8 KiB
# (the log counts them, and fio's 4-128 KiB writes verify through both
# paths): `auto` has the queue register the large ones' buffers, and with
# UBLK_STACK_ZERO_COPY=on the kernel does (AUTO_BUF_REG).
# On 6.12 (user copy, no zero copy) the same tmpfs file takes USER_COPY for
# every request (data path `user-copy`), through the mapping as far as it
# can; UBLK_STACK_ZERO_COPY=user-copy gives any stack that data path (a file
# on ext4 and a checksum: every request copied through the daemon's buffer
# around the stack's I/O), and fio verify passes through all of them.
# Small writes go straight into the file's mapped pages and small reads come
# straight from them where the pages are known to hold data (the log counts
# them): reading 16 MiB of holes allocates no tmpfs page, and a written block
# reads back.
# UBLK_STACK_USER_COPY_MAX sets that limit (0 turns user copy off; a bad
# value is refused); the file truncated behind the daemon fails I/O past its
# new end with EIO and the daemon lives. On 7.3, with UBLK_STACK_TEST_AUTO_REG_MISS=3 the
# kernel's automatic registration fails for every 3rd tag and the queue
# registers those buffers itself (UBLK_IO_F_NEED_REG_BUF), per tag and in
# batch mode: fio verify passes and the log counts the fallbacks. A disk
# leaf on a 4Kn loop device gets DMA_ALIGN 4095 under zero copy (7.3), shown
# by `status` (`"dma_alignment":4095`, "DMA alignment 4096 bytes"), so a
# misaligned direct write is refused with EINVAL rather than failing in the
# leaf; on 6.12 (copy mode) none is sent (`"dma_alignment":null`, no DMA in
# the table) and the write is served; fio verify passes on both.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

case $(uname -r) in
7.*) expect=zero-copy tmpfs_expect=zero-copy ;;
6.12.*) expect=copy tmpfs_expect=user-copy ;;
*) fail "unexpected kernel $(uname -r)" ;;
esac

scratch_ext4 320M

cat >/work/zfile.toml <<'TOML'
version = 1
[device]
name = "zfile"
top = "f"
queue_depth = 32
[layers.f]
type = "file"
path = "ext4/zfile.img"
size = "48MiB"
create = true
TOML

mirror_of_files zmirror

cat >/work/zraid.toml <<'TOML'
version = 1
[device]
name = "zraid"
top = "r"
queue_depth = 32
[layers.r]
type = "raid0"
stripes = ["c", "d"]
chunk = "16KiB"
[layers.c]
type = "file"
path = "ext4/raid-c.img"
size = "24MiB"
create = true
[layers.d]
type = "file"
path = "ext4/raid-d.img"
size = "24MiB"
create = true
TOML

cat >/work/ztmpfs.toml <<'TOML'
version = 1
[device]
name = "ztmpfs"
top = "f"
queue_depth = 32
[layers.f]
type = "file"
path = "ztmpfs.img"
size = "48MiB"
create = true
TOML

cat >/work/zsum.toml <<'TOML'
version = 1
[device]
name = "zsum"
top = "s"
queue_depth = 32
[layers.s]
type = "checksum"
over = "f"
[layers.f]
type = "file"
path = "zsum.img"
size = "48MiB"
create = true
TOML

# data_path NAME: the device's `ublk.data_path` from `status --json`.
data_path() {
    ublk-stack status "$1" --json >/work/status.json || fail "status $1"
    sed -n 's/.*"data_path":"\([a-z-]*\)".*/\1/p' /work/status.json
}

fio_verify() { # extra fio arguments
    fio --name=zc --filename="$DEV" --ioengine=io_uring --direct=1 \
        --rw=randwrite --bsrange=4k-128k --iodepth=32 --size=12M \
        --verify=crc32c --verify_fatal=1 "$@" >/work/fio.out 2>&1 ||
        { cat /work/fio.out; fail "fio $*"; }
    grep -E 'err=' /work/fio.out | head -2
    grep -q 'err= 0' /work/fio.out || { cat /work/fio.out; fail "fio reported errors"; }
}

# serve NAME WANT: up, check the data path, fio write + verify, down, up, verify
# again (the data is in the leaves, not in a daemon buffer), down.
serve() {
    local name=$1 want=$2 got
    step "$name: up (${UBLK_STACK_ZERO_COPY:-auto})"
    up_device "/work/$name.toml"
    got=$(data_path "$name")
    [[ $got == "$want" ]] || { cat /work/status.json; fail "$name: data path $got, not $want"; }
    if [[ $want == zero-copy ]]; then
        grep -Eq '"features":\[[^]]*"(AUTO_BUF_REG|SUPPORT_ZERO_COPY)"' /work/status.json ||
            { cat /work/status.json; fail "$name: zero copy without its feature in the list"; }
    fi
    # Zero copy takes requests up to 1 MiB whole; copy and user copy up to
    # 512 KiB (each tag's buffer).
    local max_kb want_kb=512
    [[ $want == zero-copy ]] && want_kb=1024
    max_kb=$(cat "/sys/block/${DEV#/dev/}/queue/max_sectors_kb")
    ((max_kb == want_kb)) || fail "$name: requests up to $max_kb KiB, not $want_kb"
    step "$name: fio randwrite + verify, then 1 MiB writes + verify"
    fio_verify --do_verify=1
    fio_verify --rw=write --bs=1M --offset=24M --do_verify=1
    down_device "$name"
    no_ublk_devices
    step "$name: verify after down and up"
    up_device "/work/$name.toml"
    fio_verify --verify_only
    down_device "$name"
    no_ublk_devices
}

: >/work/daemon.err
# On a failure, the daemons' log says why.
trap 'rc=$?; ((rc == 0)) || tail -40 /work/daemon.err >&2' EXIT
serve zfile "$expect"
serve zmirror "$expect"
# The data after each leg's 12 KiB of mirror metadata.
cmp -i 12288 ext4/mirror-a.img ext4/mirror-b.img || fail "the mirror's legs differ"
serve zraid "$expect"
serve zsum copy

# serve_tmpfs WANT: serve ztmpfs; with zero copy, its small requests
# must have gone by user copy (USER_COPY in the features, counted in the log),
# with user copy alone all of them.
serve_tmpfs() {
    local lines
    lines=$(wc -l </work/daemon.err)
    serve ztmpfs "$1"
    tail -n +$((lines + 1)) /work/daemon.err >/work/tmpfs.log
    grep -E 'queues stopped' /work/tmpfs.log
    if [[ $1 == zero-copy || $1 == user-copy ]]; then
        grep -q '"USER_COPY"' /work/status.json || { cat /work/status.json; fail "ztmpfs: $1 without USER_COPY"; }
        grep -Eq 'queues stopped.*errors=0.*user_copied=[1-9][0-9]* mapped=[1-9]' /work/tmpfs.log ||
            { cat /work/tmpfs.log; fail "ztmpfs: no request went by user copy through the file's mapping"; }
    else
        grep -Eq 'queues stopped.*errors=0.*user_copied=0' /work/tmpfs.log ||
            { cat /work/tmpfs.log; fail "ztmpfs: user copy in copy mode"; }
    fi
    if [[ $1 == user-copy ]]; then
        # Every request went by user copy: fio's, the verify's, the kernel's
        # own reads at `up` (all reads and writes; no flush carries data).
        local requests copied
        requests=$(sed -n 's/.*queues stopped.* requests=\([0-9]*\).*/\1/p' /work/tmpfs.log | tail -1)
        copied=$(sed -n 's/.*queues stopped.* user_copied=\([0-9]*\).*/\1/p' /work/tmpfs.log | tail -1)
        echo "ztmpfs: $copied of $requests requests by user copy"
        ((copied * 10 >= requests * 9)) || fail "ztmpfs: only $copied of $requests requests by user copy"
    fi
}
serve_tmpfs "$tmpfs_expect"

# auto: the queue registers the large requests' buffers.
if grep -q '"AUTO_BUF_REG"' /work/status.json; then
    cat /work/status.json
    fail "ztmpfs: auto uses AUTO_BUF_REG"
fi

# user copy alone, asked for, on stacks the mapping cannot serve: a file on
# ext4 (its I/O goes through the ring) and a checksum; each request's data is
# copied through the daemon's buffer around the stack's I/O.
for name in zfile zsum; do
    lines=$(wc -l </work/daemon.err)
    UBLK_STACK_ZERO_COPY=user-copy serve "$name" user-copy
    tail -n +$((lines + 1)) /work/daemon.err | grep 'queues stopped' | tee /work/uc.log
    grep -Eq 'errors=0.*user_copied=[1-9][0-9]* mapped=0' /work/uc.log ||
        fail "$name: no request went by user copy through the daemon's buffer"
done

if [[ $expect == zero-copy ]]; then
    export UBLK_STACK_ZERO_COPY=explicit
    serve zfile zero-copy
    serve zmirror zero-copy
    cmp -i 12288 ext4/mirror-a.img ext4/mirror-b.img || fail "the mirror's legs differ (explicit)"
    serve_tmpfs zero-copy
    if grep -q '"AUTO_BUF_REG"' /work/status.json; then
        cat /work/status.json
        fail "explicit mode uses AUTO_BUF_REG"
    fi
    export UBLK_STACK_ZERO_COPY=on
    serve_tmpfs zero-copy
    unset UBLK_STACK_ZERO_COPY
    grep -q '"AUTO_BUF_REG"' /work/status.json || { cat /work/status.json; fail "ztmpfs: on without AUTO_BUF_REG"; }

    # UBLK_STACK_USER_COPY_MAX: 0 turns user copy off (auto then keeps the
    # tmpfs file in copy mode; explicit gives zero copy for every request);
    # 64KiB takes 64 KiB requests by user copy too; a bad value is refused.
    export UBLK_STACK_USER_COPY_MAX=0
    serve_tmpfs copy
    UBLK_STACK_ZERO_COPY=explicit serve ztmpfs zero-copy
    if grep -q '"USER_COPY"' /work/status.json; then
        cat /work/status.json
        fail "ztmpfs: USER_COPY with UBLK_STACK_USER_COPY_MAX=0"
    fi
    grep 'queues stopped' /work/daemon.err | tail -2 | grep -Eq 'user_copied=0' ||
        fail "ztmpfs: user copy with UBLK_STACK_USER_COPY_MAX=0"
    UBLK_STACK_USER_COPY_MAX=64KiB serve_tmpfs zero-copy
    step "UBLK_STACK_USER_COPY_MAX=3000: refused"
    if UBLK_STACK_USER_COPY_MAX=3000 ublk-stack up /work/ztmpfs.toml >/work/refused.out 2>&1; then
        fail "up with UBLK_STACK_USER_COPY_MAX=3000 succeeded"
    fi
    grep -q 'UBLK_STACK_USER_COPY_MAX="3000": expected a multiple of 512' /work/refused.out ||
        { cat /work/refused.out; fail "no reason given"; }
    no_ublk_devices
    unset UBLK_STACK_USER_COPY_MAX
fi

# Small writes land in the file's pages through a mapping of it: a file
# truncated behind the daemon fails them (and reads) with EIO, and the
# daemon lives on.
step "ztmpfs truncated behind the daemon: I/O past the new end fails, the daemon lives"
up_device /work/ztmpfs.toml
truncate -s 8M /work/ztmpfs.img
if dd if=/dev/urandom of="$DEV" bs=4k count=1 seek=4096 oflag=direct conv=notrunc 2>/work/dd.err; then
    fail "a write past the truncated end succeeded"
fi
grep -q 'Input/output error' /work/dd.err || { cat /work/dd.err; fail "the write did not fail with EIO"; }
if dd if="$DEV" of=/dev/null bs=4k count=1 skip=4096 iflag=direct 2>/work/dd.err; then
    fail "a read past the truncated end succeeded"
fi
kill -0 "$DAEMON_PID" || fail "the daemon died"
dd if=/dev/urandom of="$DEV" bs=4k count=1 seek=16 oflag=direct conv=notrunc status=none ||
    fail "a write inside the file failed"
truncate -s 48M /work/ztmpfs.img
down_device ztmpfs
no_ublk_devices

# Small reads come straight from the file's mapped pages, but only pages
# known to hold data: reading the holes of a sparse file allocates
# nothing, and a block written reads back (both through the mapping).
step "ztmpfs: reading holes allocates nothing; a written block reads back; a discard reads as zeros"
rm -f /work/ztmpfs.img
lines=$(wc -l </work/daemon.err)
up_device /work/ztmpfs.toml
head -c 4096 /dev/urandom >/work/block
dd if=/work/block of="$DEV" bs=4k seek=100 oflag=direct conv=notrunc status=none ||
    fail "write of block 100"
blocks=$(stat -c %b /work/ztmpfs.img)
dd if="$DEV" of=/dev/null bs=4k count=4096 iflag=direct status=none || fail "read of 16 MiB"
(($(stat -c %b /work/ztmpfs.img) == blocks)) ||
    fail "reading holes allocated: $blocks blocks before, $(stat -c %b /work/ztmpfs.img) after"
dd if="$DEV" bs=4k skip=100 count=1 iflag=direct status=none | cmp - /work/block ||
    fail "block 100 read back differs"
# A discard punches the blocks it covers whole out of the file: read
# after it (by pread now, the pages hold no data), they are zeros, and
# the blocks beside them, read through the mapping, keep their data.
head -c 16384 /dev/urandom >/work/blocks
dd if=/work/blocks of="$DEV" bs=16k seek=50 oflag=direct conv=notrunc status=none ||
    fail "write of blocks 200-203"
dd if="$DEV" of=/work/back bs=4k skip=201 count=1 iflag=direct status=none || fail "read of block 201"
cmp -i 0:4096 -n 4096 /work/back /work/blocks || fail "block 201 read back differs"
blocks=$(stat -c %b /work/ztmpfs.img)
fio --name=trim --filename="$DEV" --ioengine=io_uring --direct=1 --rw=trim \
    --bs=8k --offset=$((201 * 4096)) --size=8k >/work/fio.out 2>&1 ||
    { cat /work/fio.out; fail "discard of blocks 201-202"; }
(($(stat -c %b /work/ztmpfs.img) == blocks - 16)) ||
    fail "the discard freed $((blocks - $(stat -c %b /work/ztmpfs.img))) sectors, not 16"
: >/work/back
for b in 200 201 202 203; do
    dd if="$DEV" bs=4k skip=$b count=1 iflag=direct status=none >>/work/back || fail "read of block $b"
done
(($(stat -c %b /work/ztmpfs.img) == blocks - 16)) || fail "reading the discarded blocks allocated them"
cmp -n 4096 /work/back /work/blocks || fail "block 200 changed by the discard beside it"
cmp -i 12288:12288 /work/back /work/blocks || fail "block 203 changed by the discard beside it"
cmp -i 4096:0 -n 8192 /work/back /dev/zero || fail "discarded blocks 201-202 do not read as zeros"
down_device ztmpfs
no_ublk_devices
tail -n +$((lines + 1)) /work/daemon.err | grep 'queues stopped' | tee /work/holes.log
# The write of block 100, its two reads, the read of block 201 before
# the discard and those of blocks 200 and 203 after it.
grep -Eq 'errors=0.*mapped=([6-9]|[1-9][0-9])' /work/holes.log ||
    fail "block 100 was not written and read through the mapping"

if [[ $expect == zero-copy ]]; then
    # Every 3rd tag gets an auto-registration index past the ring's buffer
    # table: the kernel's registration fails, the request comes flagged
    # NEED_REG_BUF and the queue registers the buffer itself.
    export UBLK_STACK_TEST_AUTO_REG_MISS=3
    for protocol in off on; do
        lines=$(wc -l </work/daemon.err)
        UBLK_STACK_BATCH_IO=$protocol serve zfile zero-copy
        grep -q '"AUTO_BUF_REG"' /work/status.json || { cat /work/status.json; fail "fallback test without AUTO_BUF_REG"; }
        if [[ $protocol == on ]]; then
            grep -q '"BATCH_IO"' /work/status.json || { cat /work/status.json; fail "fallback test not in batch mode"; }
        fi
        tail -n +$((lines + 1)) /work/daemon.err >/work/fallback.log
        grep -q 'buffer unregistered (UBLK_IO_F_NEED_REG_BUF); registered by the queue' /work/fallback.log ||
            { cat /work/fallback.log; fail "batch $protocol: the fallback path did not run"; }
        grep -E 'queues stopped' /work/fallback.log
        grep -Eq 'queues stopped.*errors=0 registered_here=[1-9]' /work/fallback.log ||
            { cat /work/fallback.log; fail "batch $protocol: no request registered by the queue"; }
    done
    unset UBLK_STACK_TEST_AUTO_REG_MISS
    step "zero copy asked for a checksum stack: refused"
    if UBLK_STACK_ZERO_COPY=on ublk-stack up /work/zsum.toml >/work/refused.out 2>&1; then
        fail "up of a checksum stack with UBLK_STACK_ZERO_COPY=on succeeded"
    fi
    grep -q '`checksum` layer' /work/refused.out || { cat /work/refused.out; fail "no reason given"; }
else
    step "zero copy asked for on 6.12: refused, naming the kernel needed"
    if UBLK_STACK_ZERO_COPY=on ublk-stack up /work/zfile.toml >/work/refused.out 2>&1; then
        fail "up with UBLK_STACK_ZERO_COPY=on succeeded on a kernel without zero copy"
    fi
    grep -q 'Linux 6.15 or later' /work/refused.out || { cat /work/refused.out; fail "no kernel version named"; }
    ublk-stack features --json | grep -q '"data_path":"copy"' || fail "features does not say copy"
fi

# A 4Kn leaf: a disk leaf (O_DIRECT) on a loop device with 4096-byte sectors.
# Zero copy hands the request's own pages to it, so on 7.3 the device asks
# for 4 KiB-aligned buffers (UBLK_PARAM_TYPE_DMA_ALIGN, mask 4095): fio
# verify passes, and a direct write from a buffer 512 bytes into a page is
# refused by the block layer (EINVAL) instead of failing in the leaf. On 6.12
# (copy mode, nothing sent) the same write is served.
step "4Kn loop leaf: fio verify, and a misaligned direct write"
truncate -s 48M /work/4kn.img
loop4k=$(losetup -f --show --sector-size 4096 /work/4kn.img)
[[ $(blockdev --getss "$loop4k") == 4096 ]] || fail "$loop4k has $(blockdev --getss "$loop4k")-byte sectors"
cat >/work/z4kn.toml <<TOML
version = 1
[device]
name = "z4kn"
top = "d"
block_size = 4096
queue_depth = 32
[layers.d]
type = "disk"
path = "$loop4k"
TOML
up_device /work/z4kn.toml
got=$(data_path z4kn)
[[ $got == "$expect" ]] || { cat /work/status.json; fail "z4kn: data path $got, not $expect"; }
align=$(cat "/sys/block/${DEV#/dev/}/queue/dma_alignment")
echo "z4kn: dma_alignment $align"
ublk-stack status z4kn >/work/status.txt || fail "status z4kn"
grep '^ublk:' /work/status.txt
if [[ $expect == zero-copy ]]; then
    grep -q '"dma_alignment":4095' /work/status.json || { cat /work/status.json; fail "z4kn: status --json does not say dma_alignment 4095"; }
    grep -q '^ublk: .*, DMA alignment 4096 bytes$' /work/status.txt || { cat /work/status.txt; fail "z4kn: status does not show the DMA alignment"; }
else
    grep -q '"dma_alignment":null' /work/status.json || { cat /work/status.json; fail "z4kn: status --json has a dma_alignment in copy mode"; }
    if grep -q 'DMA' /work/status.txt; then
        cat /work/status.txt
        fail "z4kn: status shows a DMA alignment in copy mode"
    fi
fi
fio_verify --do_verify=1
lines=$(wc -l </work/daemon.err)
rc=0
fio --name=mis --filename="$DEV" --ioengine=psync --direct=1 --rw=write --bs=8k \
    --offset=32M --size=64k --iomem_align=512 >/work/fio-mis.out 2>&1 || rc=$?
if [[ $expect == zero-copy ]]; then
    ((rc != 0)) || { cat /work/fio-mis.out; fail "a misaligned direct write was accepted"; }
    grep -q 'Invalid argument' /work/fio-mis.out || { cat /work/fio-mis.out; fail "misaligned write: not EINVAL"; }
    [[ $align == 4095 ]] || fail "z4kn: dma_alignment $align, not 4095"
else
    ((rc == 0)) || { cat /work/fio-mis.out; fail "a misaligned direct write failed in copy mode"; }
fi
if tail -n +$((lines + 1)) /work/daemon.err | grep -q 'request failed'; then
    tail -n +$((lines + 1)) /work/daemon.err
    fail "z4kn: a request failed in the leaf"
fi
fio_verify --verify_only
down_device z4kn
losetup -d "$loop4k"

no_ublk_devices
if grep -q 'registering the request' /work/daemon.err; then
    cat /work/daemon.err
    fail "a buffer registration failed"
fi
drop_scratch_ext4
step "ok"
