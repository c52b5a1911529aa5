#!/bin/bash
# `up --metrics` in front of a real ublk device: the page names /dev/ublkbN,
# its counters move with I/O on the device, and a second daemon asking for the
# same port is refused before it creates a device.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

mkdir -p /work/data
cat >/work/metrics0.toml <<'TOML'
version = 1

[device]
name = "metrics0"
top = "cache"

[layers.cache]
type = "cache"
over = "leaf"
capacity = "4MiB"

[layers.leaf]
type = "file"
path = "data/metrics0.img"
size = "64MiB"
create = true
TOML

URL=http://127.0.0.1:9474/metrics
scrape() { wget -qO- "$URL" || fail "no page at $URL"; }
# value SERIES: the value of the sample named exactly SERIES in the last scrape.
value() { grep -F "$1 " /work/page | awk '{print $NF}'; }

step "up --metrics 9474 serves the page for the ublk device"
up_device /work/metrics0.toml --metrics 9474
scrape >/work/page
grep -qxF "ublk_stack_device_info{device=\"metrics0\",path=\"$DEV\"} 1" /work/page ||
    fail "the page does not name $DEV: $(grep device_info /work/page)"
! grep -q '^ublk_stack_nbd_connections' /work/page || fail "NBD metrics without --nbd"
series='{device="metrics0",layer="cache",type="cache",op="write"}'
before=$(value "ublk_stack_layer_ops_total$series")
[[ -n $before ]] || fail "no write counter for the cache layer"

step "I/O on the device moves the counters"
dd if=/dev/urandom of=/work/data4m bs=1M count=4 status=none
dd if=/work/data4m of="$DEV" bs=4096 oflag=direct status=none
dd if="$DEV" of=/work/back4m bs=4096 count=1024 iflag=direct status=none
cmp /work/data4m /work/back4m || fail "read back differs"
scrape >/work/page
after=$(value "ublk_stack_layer_ops_total$series")
((after > before)) || fail "writes at the cache went from $before to $after"
bytes=$(value "ublk_stack_layer_bytes_total$series")
((bytes >= 4 << 20)) || fail "bytes written at the cache: $bytes"
reads=$(value 'ublk_stack_layer_ops_total{device="metrics0",layer="leaf",type="file",op="read"}')
hits=$(value 'ublk_stack_cache_hits_total{device="metrics0",layer="cache"}')
echo "writes $before -> $after, bytes $bytes, leaf reads $reads, cache hits $hits"
! wget -qO- http://127.0.0.1:9474/ 2>/dev/null || fail "/ answered"

step "a second daemon on the same port is refused before it makes a device"
cat >/work/metrics1.toml <<'TOML'
version = 1

[device]
name = "metrics1"
top = "ram"

[layers.ram]
type = "memory"
size = "16MiB"
TOML
rc=0
ublk-stack up /work/metrics1.toml --metrics 9474 >/work/up1.out 2>/work/up1.err || rc=$?
cat /work/up1.err
((rc == 1)) || fail "the second up exited $rc"
grep -q 'in use' /work/up1.err || fail "the refusal does not say the port is in use"
[[ $(ls /dev/ublkb*) == "$DEV" ]] || fail "devices: $(ls /dev/ublkb*)"

down_device metrics0
no_ublk_devices
step "metrics ok"
