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

# no_ublk_devices: neither a ublk disk nor a ublk char device is left.
no_ublk_devices() {
    local left
    left=$(ls /dev/ublkb* /dev/ublkc* 2>/dev/null || true)
    [[ -z $left ]] || fail "ublk devices left behind: $left"
}

# Byte offset of the first data block of a `checksum` layer (4 KiB blocks) over
# a device of $1 bytes, per docs/formats/checksum.md (version 2): superblock,
# table header, table pages (two 4 KiB slots per 255 entries), data blocks.
checksum_data_start() {
    local room=$(($1 - 4096 - 8192)) n
    n=$((room / (4096 + 16)))
    while (((n + 254) / 255 * 8192 + n * 4096 > room)); do n=$((n - 1)); done
    echo $((4096 + 8192 + (n + 254) / 255 * 8192))
}
