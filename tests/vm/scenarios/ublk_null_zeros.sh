#!/bin/bash
# A null device reads zeros, always: its leaf skips zeroing a tag buffer that
# it knows already holds zeros (layers/src/zero_prefix.rs), and every write
# through the same buffer must undo that knowledge. One queue of depth 1, so
# every request goes through the one tag buffer; the kernel copies each
# WRITE's data into it before the daemon sees the request.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

cat >/work/n.toml <<'TOML'
version = 1
[device]
name = "n"
top = "z"
queues = 1
queue_depth = 1
[layers.z]
type = "null"
size = "64MiB"
TOML
up_device /work/n.toml
head -c 1048576 /dev/zero >/work/zeros
dd if=/dev/urandom of=/work/data bs=1M count=1 status=none

# read_is_zeros BS COUNT WHAT: BS*COUNT bytes read from offset 0 are zeros.
read_is_zeros() {
    dd if="$DEV" of=/work/got bs="$1" count="$2" iflag=direct status=none
    cmp -n $(($1 * $2)) /work/got /work/zeros || fail "$3: a null read returned data"
}

step "reads, then a write and reads through the same tag buffer"
read_is_zeros 64k 2 "the first reads"
read_is_zeros 64k 2 "reads again"
for bs in 4k 64k 512k; do
    dd if=/work/data of="$DEV" bs="$bs" count=1 oflag=direct status=none
    read_is_zeros "$bs" 1 "a $bs read right after a $bs write"
    read_is_zeros 1M 1 "a longer read after a $bs write"
done
step "writes and reads interleaved by fio"
fio --name=mix --filename="$DEV" --ioengine=psync --direct=1 --rw=randrw --bs=4k \
    --size=1M --io_size=8M --buffer_pattern=0xa5 >/dev/null
read_is_zeros 1M 1 "a read after fio's writes"
down_device n
step ok
