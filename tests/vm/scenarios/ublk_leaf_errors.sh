# Errors from a leaf reach the application, without a hang or a crash:
#  - EIO: a `disk` leaf on another ublk device whose daemon is then killed (the
#    kernel fails every later I/O to that dead disk with EIO);
#  - ENOSPC: a `file` leaf on a tmpfs too small for it.
# The daemon keeps serving and counts the errors; `down` still works.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

cat >/work/lower.toml <<'TOML'
version = 1
[device]
name = "lower"
top = "ram"
queues = 1
[layers.ram]
type = "memory"
size = "64MiB"
TOML

step "lower device (memory) and an upper device with a disk leaf on it"
up_device /work/lower.toml
lower_dev=$DEV lower_pid=$DAEMON_PID
cat >/work/upper.toml <<TOML
version = 1
[device]
name = "upper"
top = "d"
queues = 1
[layers.d]
type = "disk"
path = "$lower_dev"
TOML
up_device /work/upper.toml
dd if=/dev/urandom of="$DEV" bs=64k count=16 oflag=direct status=none
dd if="$DEV" of=/dev/null bs=64k count=16 iflag=direct status=none

step "kill the lower daemon: its disk goes away"
kill -9 "$lower_pid"
for i in $(seq 1 100); do [[ -b $lower_dev ]] || break; sleep 0.1; done
[[ ! -b $lower_dev ]] || fail "$lower_dev still there 10 s after its daemon was killed"

step "reads and writes through the upper device fail with EIO, promptly"
rc=0
out=$(timeout 30 dd if="$DEV" of=/dev/null bs=4k count=1 iflag=direct 2>&1) || rc=$?
((rc != 124)) || fail "read hung"
((rc != 0)) || fail "read succeeded on a dead leaf"
grep -q "Input/output error" <<<"$out" || fail "read: expected EIO, got: $out"
rc=0
out=$(timeout 30 dd if=/dev/zero of="$DEV" bs=4k count=1 oflag=direct 2>&1) || rc=$?
((rc != 124)) || fail "write hung"
grep -q "Input/output error" <<<"$out" || fail "write: expected EIO, got: $out"
kill -0 "$DAEMON_PID" || fail "upper daemon died"
ublk-stack status upper
ublk-stack status upper --json | grep -q '"errors":0}' && fail "errors not counted"
down_device upper

step "ENOSPC from a file leaf on a full tmpfs"
mkdir -p /work/small
mount -t tmpfs -o size=8M small /work/small
cat >/work/small.toml <<'TOML'
version = 1
[device]
name = "small"
top = "f"
queues = 1
[layers.f]
type = "file"
path = "small/f.img"
size = "64MiB"
create = true
TOML
up_device /work/small.toml
dd if=/dev/urandom of="$DEV" bs=1M count=4 oflag=direct status=none
rc=0
out=$(timeout 30 dd if=/dev/urandom of="$DEV" bs=1M count=32 oflag=direct 2>&1) || rc=$?
((rc != 124)) || fail "write to a full leaf hung"
grep -q "No space left on device" <<<"$out" || fail "expected ENOSPC, got: $out"
dd if="$DEV" of=/dev/null bs=1M count=4 iflag=direct status=none || fail "reads fail after ENOSPC"
down_device small
umount /work/small
step "ok"
