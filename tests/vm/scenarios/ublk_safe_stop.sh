#!/bin/bash
# `down` refuses a device in use and leaves it serving: mounted, then held
# open by this shell; once nothing uses it, `down` removes it. `down --force`
# removes a device held open and returns. On 7.3 the kernel decides
# (TRY_STOP_DEV); on 6.12 the daemon looks for mounts and open files.
# Also what this kernel offers: `features --json` and the `ublk` object of
# `status --json`, with NO_AUTO_PART_SCAN and SAFE_STOP_DEV in use on 7.3 only.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

kernel=$(uname -r)
case $kernel in
6.12.*) newer=no ;;
7.3.*) newer=yes ;;
*) fail "unexpected kernel $kernel" ;;
esac

# json_array KEY JSON: the items of a one-line JSON object's array KEY.
json_array() { sed -n "s/.*\"$1\":\[\([^]]*\)\].*/\1/p" <<<"$2"; }
# has NAME LIST: whether the quoted name is in a json_array result.
has() { grep -q "\"$1\"" <<<"$2"; }

step "features --json on $kernel"
features=$(ublk-stack features --json)
echo "$features"
grep -q '"loaded":true' <<<"$features" || fail "features: ublk_drv not loaded"
# What a stack of file leaves would get: zero copy where AUTO_BUF_REG is.
want_path=copy
[[ $newer == yes ]] && want_path=zero-copy
grep -q "\"data_path\":\"$want_path\"" <<<"$features" || fail "features: data path is not $want_path"
mask=$(sed -n 's/.*"kernel_features":\([0-9]*\).*/\1/p' <<<"$features")
offered=$(json_array offered "$features")
in_use=$(json_array in_use "$features")
echo "FEATURES kernel=$kernel mask=$(printf '0x%x' "$mask") in_use=$in_use"
has CMD_IOCTL_ENCODE "$in_use" || fail "CMD_IOCTL_ENCODE not in use"
has USER_RECOVERY "$offered" || fail "USER_RECOVERY not offered"
if [[ $newer == yes ]]; then
    has SAFE_STOP_DEV "$offered" || fail "7.3 does not offer SAFE_STOP_DEV"
    has NO_AUTO_PART_SCAN "$in_use" || fail "NO_AUTO_PART_SCAN not in use on 7.3"
    has SAFE_STOP_DEV "$in_use" || fail "SAFE_STOP_DEV not in use on 7.3"
    grep -q '"safe_stop":"TRY_STOP_DEV"' <<<"$features" || fail "7.3 should stop with TRY_STOP_DEV"
else
    ! has NO_AUTO_PART_SCAN "$in_use" || fail "NO_AUTO_PART_SCAN in use on a kernel without it"
    ! has SAFE_STOP_DEV "$offered" || fail "6.12 should not offer SAFE_STOP_DEV"
    grep -q '"safe_stop":"open check"' <<<"$features" || fail "6.12 should use the open check"
fi
ublk-stack features | grep -q '^CMD_IOCTL_ENCODE  *6  yes  *yes$' || fail "features table"

cat >/work/safe0.toml <<'TOML'
version = 1

[device]
name = "safe0"
top = "disk"
queues = 1

[layers.disk]
type = "file"
path = "/work/safe0.img"
size = "64MiB"
create = true
TOML

# A buffered file on tmpfs: USER_COPY alone on 6.12 (no zero copy); on 7.3
# zero copy for large requests and USER_COPY for small ones.
tmpfs_path=user-copy
[[ $newer == yes ]] && tmpfs_path=zero-copy
step "up; status shows the ublk side"
up_device /work/safe0.toml
status=$(ublk-stack status safe0 --json)
ublk=$(sed -n 's/.*"ublk":\({[^}]*}\).*/\1/p' <<<"$status")
echo "status ublk: $ublk"
grep -q "\"data_path\":\"$tmpfs_path\"" <<<"$ublk" || fail "status: data path is not $tmpfs_path in $ublk"
grep -qE "\"kernel_features\":$mask[,}]" <<<"$ublk" || fail "status: kernel_features is not $mask"
used=$(json_array features "$ublk")
has CMD_IOCTL_ENCODE "$used" || fail "status: CMD_IOCTL_ENCODE not in use"
has USER_COPY "$used" || fail "status: USER_COPY not in use"
if [[ $newer == yes ]]; then
    has NO_AUTO_PART_SCAN "$used" || fail "status: NO_AUTO_PART_SCAN not in use"
else
    ! has NO_AUTO_PART_SCAN "$used" || fail "status: NO_AUTO_PART_SCAN in use on 6.12"
fi
ublk-stack status safe0 | grep "^ublk: data path $tmpfs_path, features " || fail "status: no ublk line"

step "down refuses a mounted device, which keeps serving"
mkfs.ext4 -q -F "$DEV"
mkdir -p /mnt/safe
mount -t ext4 "$DEV" /mnt/safe
dd if=/dev/urandom of=/work/data bs=1M count=8 status=none
cp /work/data /mnt/safe/data
sync
rc=0
out=$(ublk-stack down safe0 2>&1) || rc=$?
echo "down: rc=$rc: $out"
((rc == 1)) || fail "down of a mounted device exited $rc"
grep -q "safe0: $DEV is in use (mounted on /mnt/safe" <<<"$out" || fail "down's message: $out"
grep -q -- "--force" <<<"$out" || fail "down's message does not name --force: $out"
kill -0 "$DAEMON_PID" || fail "the daemon exited after a refused down"
echo 3 >/proc/sys/vm/drop_caches
cmp /work/data /mnt/safe/data || fail "file read back after the refused down differs"
cp /work/data /mnt/safe/again && sync
umount /mnt/safe
e2fsck -fn "$DEV" >/dev/null || fail "e2fsck after the refused down"

step "down refuses a device held open by a process"
exec 3<"$DEV"
rc=0
# Neither the client nor a subshell inherits fd 3: this shell is the one user.
ublk-stack down safe0 >/work/down.out 2>&1 3<&- || rc=$?
out=$(</work/down.out)
echo "down: rc=$rc: $out"
((rc == 1)) || fail "down of a held-open device exited $rc"
grep -q "safe0: $DEV is in use (open in pid $$ (bash))" <<<"$out" || fail "down's message: $out"
dd if="$DEV" of=/dev/null bs=4k count=256 iflag=direct status=none || fail "I/O after the refused down"
exec 3<&-

step "down removes the device once nothing uses it"
down_device safe0
[[ ! -e $DEV ]] || fail "$DEV still there after down"
no_ublk_devices

step "down --force removes a device held open"
up_device /work/safe0.toml
exec 3<"$DEV"
rc=0
timeout 60 ublk-stack down safe0 --force || rc=$?
((rc == 0)) || fail "down --force exited $rc"
rc=0
wait "$DAEMON_PID" || rc=$?
((rc == 0)) || { cat /work/daemon.err >&2; fail "daemon exited $rc after down --force"; }
[[ ! -e $DEV ]] || fail "$DEV still there after down --force"
# Deleted without waiting for this shell's fd (DEL_DEV_ASYNC), said in the log.
grep "deleted but still held open" /work/daemon.err || fail "no word of the device still held open"
exec 3<&-

step "the kernel released it: the same config comes up and goes down again"
up_device /work/safe0.toml
mount -t ext4 -o ro "$DEV" /mnt/safe
cmp /work/data /mnt/safe/again || fail "data after down --force and up differs"
umount /mnt/safe
down_device safe0
no_ublk_devices
step "ublk_safe_stop ok"
