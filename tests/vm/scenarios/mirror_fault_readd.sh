# fio verify on a mirror of checksummed legs while a fault layer under one leg is
# switched live to 100% write errors: no verify error, `status` shows the leg
# failed; once the knob is cleared and the leg re-added, the resync completes
# and the legs hold the same data.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
write_config() {
    cat >/work/m.toml <<TOML
version = 1

[device]
name = "heal0"
top = "m"
queues = 2

[layers.m]
type = "mirror"
legs = ["c0", "c1"]

[layers.c0]
type = "checksum"
over = "f0"

[layers.f0]
type = "fault"
over = "l0"
write_error_rate = $1

[layers.c1]
type = "checksum"
over = "l1"

[layers.l0]
type = "file"
path = "data/l0.img"
size = "128MiB"
create = true

[layers.l1]
type = "file"
path = "data/l1.img"
size = "128MiB"
create = true
TOML
}

write_config 0.0
up_device /work/m.toml

step "fio verify runs while leg 0 starts failing every write"
fio --name=v --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite \
    --bsrange=4k-64k --iodepth=16 --size=96m --verify=crc32c --verify_fatal=1 \
    --do_verify=1 >/work/fio.out 2>&1 &
fio_pid=$!
sleep 2
write_config 1.0
ublk-stack reload heal0
rc=0
wait "$fio_pid" || rc=$?
((rc == 0)) || { cat /work/fio.out; fail "fio failed (rc=$rc)"; }
grep -q "err= 0" /work/fio.out || { cat /work/fio.out; fail "fio reported errors"; }
ublk-stack status heal0 --json >/work/status.json
grep -q '"legs":\[{"health":"failed"' /work/status.json || { cat /work/status.json; fail "leg 0 not shown failed"; }

step "clear the fault, re-add leg 0, resync completes"
write_config 0.0
ublk-stack reload heal0
ublk-stack readd heal0 m 0
for i in $(seq 1 600); do
    ublk-stack status heal0 --json >/work/status.json
    grep -q '"legs":\[{"health":"ok"' /work/status.json &&
        grep -q '"resync_percent":null' /work/status.json && break
    sleep 0.2
done
grep -q '"legs":\[{"health":"ok"' /work/status.json || { cat /work/status.json; fail "leg 0 did not come back"; }
fio --name=v --filename="$DEV" --ioengine=io_uring --direct=1 --rw=read \
    --bsrange=4k-64k --size=96m --verify=crc32c --verify_only=1 >/work/fio2.out 2>&1 ||
    { cat /work/fio2.out; fail "verify after resync failed"; }
down_device heal0

step "legs identical"
# Each leg is checksum over a file: its own superblock and table (which differ),
# then data blocks (table pages between groups of them); the first 3 hold the mirror's metadata, which
# names the leg. Everything after that must match.
[[ $(checksum_data_from /work/data/l0.img 3 | sha256sum) == $(checksum_data_from /work/data/l1.img 3 | sha256sum) ]] ||
    fail "legs differ after the resync"
no_ublk_devices
step "ok"
