# Zero copy: on 7.3 (AUTO_BUF_REG) a file leaf, a mirror of two files and a
# raid0 of two files (requests split at chunk edges, so leaves use fixed
# buffers at offsets) say data path `zero-copy`, and fio random writes with
# verification pass; the mirror's legs come out byte-identical. The daemon's
# own registration (UBLK_STACK_ZERO_COPY=explicit, the SUPPORT_ZERO_COPY
# path) passes the same check. A checksum over a file stays in copy mode. On
# 6.12 (no zero copy) the same configs run in copy mode, and asking for zero
# copy is refused with the kernel version it needs. A buffered file on tmpfs
# stays in copy mode unless zero copy is asked for (UBLK_STACK_ZERO_COPY=on),
# which then serves it too.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

case $(uname -r) in
7.*) expect=zero-copy ;;
6.12.*) expect=copy ;;
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
    step "$name: fio randwrite + verify"
    fio_verify --do_verify=1
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
serve ztmpfs copy

if [[ $expect == zero-copy ]]; then
    export UBLK_STACK_ZERO_COPY=explicit
    serve zfile zero-copy
    serve zmirror zero-copy
    cmp -i 12288 ext4/mirror-a.img ext4/mirror-b.img || fail "the mirror's legs differ (explicit)"
    if grep -q '"AUTO_BUF_REG"' /work/status.json; then
        cat /work/status.json
        fail "explicit mode uses AUTO_BUF_REG"
    fi
    export UBLK_STACK_ZERO_COPY=on
    serve ztmpfs zero-copy
    unset UBLK_STACK_ZERO_COPY
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
no_ublk_devices
if grep -q 'registering the request' /work/daemon.err; then
    cat /work/daemon.err
    fail "a buffer registration failed"
fi
drop_scratch_ext4
step "ok"
