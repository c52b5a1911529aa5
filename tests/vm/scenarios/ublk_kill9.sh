# kill -9 of a daemon under load, without user recovery (the fallback for kernels
# that do not offer it; ublk_recovery.sh covers recovery): the application's I/O
# fails instead of hanging, the kernel removes /dev/ublkbN, and the next `up` of
# the same config (same fixed id) works: it deletes the dead daemon's leftover
# /dev/ublkcN first. SIGTERM then stops that daemon cleanly.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash
export UBLK_STACK_USER_RECOVERY=off

cat >/work/k.toml <<'TOML'
version = 1
[device]
name = "k9"
top = "f"
queues = 2
id = 5
[layers.f]
type = "file"
path = "k9.img"
size = "128MiB"
create = true
TOML

step "up with id 5, fio running"
up_device /work/k.toml
[[ $DEV == /dev/ublkb5 ]] || fail "fixed id not honoured: $DEV"
fio --name=load --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randrw \
    --bs=4k --iodepth=32 --numjobs=2 --time_based --runtime=120 >/work/fio.out 2>&1 &
fio_pid=$!
sleep 3
kill -0 "$fio_pid" || { cat /work/fio.out; fail "fio ended early"; }

step "kill -9 the daemon"
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" || true
for i in $(seq 1 300); do kill -0 "$fio_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$fio_pid" 2>/dev/null && fail "fio still running 30 s after the daemon died (hang)"
wait "$fio_pid" || true
grep -E 'err=' /work/fio.out | head -3
for i in $(seq 1 100); do [[ -b /dev/ublkb5 ]] || break; sleep 0.1; done
[[ ! -b /dev/ublkb5 ]] || fail "/dev/ublkb5 still there 10 s after the daemon died"
ls -l /dev/ublkc* 2>/dev/null || true

step "up again with the same id"
up_device /work/k.toml
[[ $DEV == /dev/ublkb5 ]] || fail "second up got $DEV"
dd if="$DEV" of=/dev/null bs=1M count=8 iflag=direct status=none
dd if=/dev/urandom of="$DEV" bs=1M count=8 oflag=direct status=none
ublk-stack list

step "SIGTERM stops cleanly"
kill -TERM "$DAEMON_PID"
rc=0
wait "$DAEMON_PID" || rc=$?
((rc == 0)) || { cat /work/daemon.err; fail "daemon exited $rc on SIGTERM"; }
no_ublk_devices
[[ ! -e /run/ublk-stack/k9.sock ]] || fail "control socket left behind"
[[ ! -e /run/ublk-stack/k9.device ]] || fail "device record written without recovery"
step "ok"
