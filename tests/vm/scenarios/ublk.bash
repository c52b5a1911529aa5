# Sourced by the ublk scenarios after /vmtest/lib.sh: start and stop a daemon and
# check what the kernel shows. Not a scenario itself (no .sh suffix).

# up_device CONFIG [OPTION...]: run `ublk-stack up CONFIG OPTION...` in the
# background and wait for its ready line. Sets DEV (/dev/ublkbN), DAEMON_PID and
# READY (the whole line).
up_device() {
    local config=$1 out
    out=$(mktemp /work/up.XXXXXX)
    ublk-stack up "$config" "${@:2}" >"$out" 2>>/work/daemon.err &
    DAEMON_PID=$!
    local i
    for i in $(seq 1 600); do
        grep -q ' ready (' "$out" && break
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            cat /work/daemon.err >&2
            fail "ublk-stack up $config exited before it was ready"
        fi
        sleep 0.1
    done
    READY=$(grep ' ready (' "$out") || fail "no ready line from ublk-stack up $config within 60 s"
    echo "$READY"
    DEV=$(awk '{print $2}' <<<"$READY")
    [[ -b $DEV ]] || fail "$DEV is not a block device after the ready line"
}

# down_device NAME: `ublk-stack down NAME` must succeed and the daemon must exit 0.
down_device() {
    local name=$1 rc=0
    ublk-stack down "$name" || fail "ublk-stack down $name failed"
    wait "$DAEMON_PID" || rc=$?
    ((rc == 0)) || { cat /work/daemon.err >&2; fail "daemon exited $rc after down"; }
}

# wait_gone PID: the process, which need not be a child of this shell (a
# daemon an upgrade started), has exited; a zombie counts as exited.
wait_gone() {
    local i
    for i in $(seq 1 300); do
        [[ -d /proc/$1 ]] || return 0
        [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]] && return 0
        sleep 0.1
    done
    fail "pid $1 still running after 30 s"
}

# watch_device: note, every 20 ms until device_stayed, any moment $DEV is
# not a block device (an upgrade must never let it go). Sets WATCH_PID.
watch_device() {
    rm -f /work/missing /work/stop-watch
    (
        while [[ ! -e /work/stop-watch ]]; do
            [[ -b $DEV ]] || echo "$DEV missing at $(date +%s.%N)" >>/work/missing
            sleep 0.02
        done
    ) &
    WATCH_PID=$!
}

# device_stayed WHEN: stop watch_device's watcher; fail if $DEV went missing.
device_stayed() {
    touch /work/stop-watch
    wait "$WATCH_PID"
    [[ ! -e /work/missing ]] || { cat /work/missing; fail "$DEV disappeared${1:+ $1}"; }
}

# scratch_ext4 SIZE: an ext4 file system of SIZE (truncate's syntax) on a loop
# device, mounted at /work/ext4, so leaves take the io_uring path of a real
# file system (/work itself is tmpfs). Sets EXT4_LOOP; drop_scratch_ext4 undoes it.
scratch_ext4() {
    truncate -s "$1" /work/ext4.img
    mkfs.ext4 -q -F /work/ext4.img || fail "mkfs.ext4"
    EXT4_LOOP=$(losetup -f --show /work/ext4.img)
    mkdir -p /work/ext4
    mount -t ext4 "$EXT4_LOOP" /work/ext4 || fail "mount ext4"
}

drop_scratch_ext4() {
    umount /work/ext4
    losetup -d "$EXT4_LOOP"
}

# mirror_of_files NAME: /work/NAME.toml, device NAME, a mirror of two 48 MiB
# file legs on the scratch ext4 (ext4/mirror-a.img and ext4/mirror-b.img).
mirror_of_files() {
    cat >"/work/$1.toml" <<TOML
version = 1
[device]
name = "$1"
top = "m"
queue_depth = 32
[layers.m]
type = "mirror"
legs = ["a", "b"]
[layers.a]
type = "file"
path = "ext4/mirror-a.img"
size = "48MiB"
create = true
[layers.b]
type = "file"
path = "ext4/mirror-b.img"
size = "48MiB"
create = true
TOML
}

# no_ublk_devices: neither a ublk disk nor a ublk char device is left.
no_ublk_devices() {
    local left
    left=$(ls /dev/ublkb* /dev/ublkc* 2>/dev/null || true)
    [[ -z $left ]] || fail "ublk devices left behind: $left"
}

# Byte offset on the leaf of data block $1 of a `checksum` layer (4 KiB
# blocks), per docs/formats/checksum.md (version 3): superblock, table header,
# then groups, each its table pages (two 4 KiB slots per 255 entries) and then
# the data blocks they describe; groups hold 1, 2, 4 … 64 pages.
checksum_block_at() {
    local i=$1 pages=1 before=0
    while ((i >= pages * 255)); do
        i=$((i - pages * 255))
        before=$((before + pages))
        ((pages < 64)) && pages=$((pages * 2))
    done
    echo $((12288 + (before + pages) * 8192 + (before * 255 + i) * 4096))
}

# The data blocks of the `checksum` leaf file $1 from block $2 on, in order,
# without the table pages between them (for comparing legs' data).
checksum_data_from() {
    local file=$1 first=$2 size pages=1 before=0 start
    size=$(stat -c %s "$file")
    while :; do
        start=$((12288 + (before + pages) * 8192 + before * 255 * 4096))
        ((start >= size)) && return 0
        if ((first < pages * 255)); then
            dd if="$file" bs=4096 skip=$((start / 4096 + first)) count=$((pages * 255 - first)) status=none
            first=0
        else
            first=$((first - pages * 255))
        fi
        before=$((before + pages))
        ((pages < 64)) && pages=$((pages * 2))
    done
}

# save_status NAME: `ublk-stack status NAME --json` into /work/status.json.
save_status() {
    ublk-stack status "$1" --json >/work/status.json || fail "status $1"
}

# fio_dev ARG...: fio on $DEV (io_uring, O_DIRECT, QD32, 12 MiB unless ARG
# says otherwise); fails on an error.
fio_dev() {
    fio --name=f --filename="$DEV" --ioengine=io_uring --direct=1 --iodepth=32 \
        --size=12M "$@" >/work/fio.out 2>&1 || { cat /work/fio.out; fail "fio $*"; }
    grep -q 'err= 0' /work/fio.out || { cat /work/fio.out; fail "fio reported errors"; }
}

# fio_ends_clean PID OUT WHAT: the background fio PID (output in OUT) ends
# within 120 s, exits 0 and reports no error, across WHAT.
fio_ends_clean() {
    local pid=$1 out=$2 what=$3 i rc=0
    for i in $(seq 1 1200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "fio still running 120 s after $what"
    wait "$pid" || rc=$?
    ((rc == 0)) || { cat "$out"; fail "fio exited $rc across $what"; }
    grep -q 'err= 0' "$out" || { cat "$out"; fail "fio reported errors across $what"; }
}
