# crypt over a file leaf: a known plaintext written through the device is
# nowhere on the leaf, and `up` with the wrong key fails with a clear message
# and leaves the leaf byte for byte untouched.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

mkdir -p /work/data
head -c 32 /dev/urandom >/work/right.key
head -c 32 /dev/urandom >/work/wrong.key
chmod 600 /work/right.key /work/wrong.key
write_config() {
    cat >/work/crypt.toml <<TOML
version = 1

[device]
name = "crypt0"
top = "crypt"

[layers.crypt]
type = "crypt"
over = "leaf"
key_file = "$1"

[layers.leaf]
type = "file"
path = "data/crypt0.img"
size = "64MiB"
create = true
TOML
}

step "write a known plaintext"
write_config right.key
up_device /work/crypt.toml
(yes 'ublk-stack known plaintext marker' || true) | head -c $((8 << 20)) >/work/plain || true
[[ $(stat -c %s /work/plain) == $((8 << 20)) ]] || fail "could not make the plaintext"
dd if=/work/plain of="$DEV" bs=1M oflag=direct status=none
dd if="$DEV" of=/work/back bs=1M count=8 iflag=direct status=none
cmp /work/plain /work/back || fail "plaintext does not read back"
down_device crypt0

step "no plaintext on the leaf"
if grep -q 'known plaintext' /work/data/crypt0.img; then
    fail "plaintext found on the leaf"
fi

step "wrong key is refused and writes nothing"
sum_before=$(sha256sum /work/data/crypt0.img)
write_config wrong.key
rc=0
ublk-stack up /work/crypt.toml >/work/wrong.out 2>&1 || rc=$?
cat /work/wrong.out
((rc != 0)) || fail "up with the wrong key succeeded"
grep -q "wrong key" /work/wrong.out || fail "the error does not say wrong key"
[[ $(wc -l </work/wrong.out) -le 3 ]] || fail "the error is not short"
[[ $(sha256sum /work/data/crypt0.img) == "$sum_before" ]] || fail "the leaf changed"
no_ublk_devices

step "the right key still opens it"
write_config right.key
up_device /work/crypt.toml
dd if="$DEV" of=/work/back bs=1M count=8 iflag=direct status=none
cmp /work/plain /work/back || fail "data lost after the refused open"
down_device crypt0
step "ok"
