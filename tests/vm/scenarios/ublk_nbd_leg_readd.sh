# A mirror of a local file and an `nbd` leaf served through ublk. The leaf's
# server is another ublk-stack (`up --nbd` on a unix socket, over a file):
# while fio writes and verifies, the server is killed and stays away past the
# leaf's timeout. fio sees no error, status shows the leg failed; once the
# server is back (same file) the leaf reconnects by itself, `readd` copies only
# the regions written since, and the legs hold the same bytes.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data /work/back
cat >/work/back/back.toml <<'TOML'
version = 1

[device]
name = "back"
top = "f"

[layers.f]
type = "file"
path = "back.img"
size = "64MiB"
create = true
TOML
cat >/work/front.toml <<'TOML'
version = 1

[device]
name = "front"
top = "m"
queues = 2

[layers.m]
type = "mirror"
legs = ["local", "remote"]

[layers.local]
type = "file"
path = "data/local.img"
size = "64MiB"
create = true

[layers.remote]
type = "nbd"
uri = "nbd+unix:///?socket=/work/back.sock"
timeout = "2s"
TOML

start_back() {
    rm -f /work/back.sock
    ublk-stack up /work/back/back.toml --nbd unix:/work/back.sock >>/work/back.log 2>&1 &
    BACK_PID=$!
    wait_for /work/back.sock 60
}

status_json() { ublk-stack status front --json >/work/status.json; }
# field NAME: the first integer field NAME in the last status.
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" /work/status.json; }
# wait_status PATTERN SECONDS: poll status until it matches the grep pattern.
wait_status() {
    local i
    for i in $(seq 1 $(($2 * 5))); do
        status_json
        grep -q "$1" /work/status.json && return 0
        sleep 0.2
    done
    cat /work/status.json /work/daemon.err >&2
    fail "status never matched $1 within $2 s"
}

start_back
up_device /work/front.toml

step "fio verify runs while the leaf's server is killed"
fio --name=v --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite \
    --bs=16k --iodepth=8 --size=16m --rate=2m --fsync=64 --verify=crc32c \
    --verify_fatal=1 --do_verify=1 >/work/fio.out 2>&1 &
fio_pid=$!
sleep 2
kill -9 "$BACK_PID"
wait "$BACK_PID" 2>/dev/null || true
wait_status '"legs":\[{"health":"ok"[^]]*},{"health":"failed"' 30
grep -q '"connected":false' /work/status.json || { cat /work/status.json; fail "the leaf does not say it is disconnected"; }
rc=0
wait "$fio_pid" || rc=$?
((rc == 0)) || { cat /work/fio.out; fail "fio failed (rc=$rc)"; }
grep -q "err= 0" /work/fio.out || { cat /work/fio.out; fail "fio reported errors"; }

step "the server comes back; the leaf reconnects; readd copies the dirty regions"
start_back
wait_status '"connected":true' 30
dirty=$(field dirty_regions)
region=$(field region_bytes)
size=$(sed -n 's/^{[^{]*"size":\([0-9]*\).*/\1/p' /work/status.json)
((dirty > 0)) || { cat /work/status.json; fail "no dirty region after writes to a degraded mirror"; }
ublk-stack readd front m 1
wait_status '"legs":\[{"health":"ok"[^]]*},{"health":"ok".*"resync_percent":null' 120
copied=$(field resync_bytes)
echo "resync copied $copied bytes; $dirty dirty regions of $region bytes; device $size bytes"
((copied > 0 && copied <= dirty * region && copied <= size / 2)) ||
    fail "the resync copied $copied bytes, not only the dirty regions"
fio --name=v --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite \
    --bs=16k --iodepth=8 --size=16m --verify=crc32c --verify_only=1 >/work/fio2.out 2>&1 ||
    { cat /work/fio2.out; fail "verify after the resync failed"; }
down_device front
kill -TERM "$BACK_PID"
wait "$BACK_PID" || fail "the back daemon did not stop cleanly"

step "legs identical"
# The first 12 KiB of each leg hold the mirror's superblock and state, which
# name the leg; everything after must match.
[[ $(tail -c +12289 /work/data/local.img | sha256sum) == $(tail -c +12289 /work/back/back.img | sha256sum) ]] ||
    fail "legs differ after the resync"
no_ublk_devices
step "ok"
