# `up` refuses with one line and exit 1: an invalid config (its errors printed), a
# fixed id that a running device holds, and a kernel without ublk_drv (naming
# --nbd). None of them leaves a device or a socket behind.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

expect_refusal() { # CONFIG PATTERN
    local rc=0
    ublk-stack up "$1" >/work/refusal.out 2>/work/refusal.err || rc=$?
    cat /work/refusal.err
    ((rc == 1)) || fail "up $1 exited $rc, expected 1"
    grep -q -- "$2" /work/refusal.err || fail "up $1: expected \"$2\""
}

step "invalid config"
cat >/work/bad.toml <<'TOML'
version = 1
[device]
name = "bad"
top = "f"
[layers.f]
type = "file"
path = "f.img"
sise = "64MiB"
TOML
expect_refusal /work/bad.toml 'bad.toml:8:1'
no_ublk_devices

step "fixed id already taken"
cat >/work/a.toml <<'TOML'
version = 1
[device]
name = "a"
top = "m"
id = 3
[layers.m]
type = "memory"
size = "16MiB"
TOML
sed -e 's/name = "a"/name = "b"/' /work/a.toml >/work/b.toml
up_device /work/a.toml
expect_refusal /work/b.toml 'ublk id 3 is already taken'
[[ ! -e /run/ublk-stack/b.sock ]] || fail "refused up left its socket"
step "same name twice"
expect_refusal /work/a.toml 'device "a" is already running'
down_device a
no_ublk_devices

step "no ublk_drv"
rmmod ublk_drv
expect_refusal /work/a.toml 'ublk_drv not loaded: modprobe ublk_drv (Linux ≥ 6.0 with CONFIG_BLK_DEV_UBLK), or serve the same stack with --nbd'
[[ ! -e /run/ublk-stack/a.sock ]] || fail "refused up left its socket"
step "ok"
