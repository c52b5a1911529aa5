# Guest side of benches/vm/batch_run.sh (run by tests/vm/run.sh inside the 7.3
# VM, whose ublk driver offers BATCH_IO).
#
# 4 KiB random reads and writes at QD32 (fio, io_uring, O_DIRECT), one queue,
# served with the batch protocol (UBLK_STACK_BATCH_IO=on) and per tag (off),
# in two data paths: copy mode (a 256 MiB file on tmpfs) and zero copy (a
# 256 MiB file on ext4 over a loop device). Rounds alternate batch and
# per-tag so that drift on the shared host hits both alike; the medians and
# their ratios go to the BENCH lines.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

rounds=${BENCH_ROUNDS:-5}

truncate -s 400M /work/ext4.img
mkfs.ext4 -q -F /work/ext4.img || fail "mkfs.ext4"
ext4_loop=$(losetup -f --show /work/ext4.img)
mkdir -p /work/ext4
mount -t ext4 "$ext4_loop" /work/ext4 || fail "mount ext4"
# Written, not sparse: reads of holes take a cheaper path than real pages.
dd if=/dev/zero of=/work/copy.img bs=1M count=256 status=none
dd if=/dev/zero of=/work/ext4/zc.img bs=1M count=256 status=none
for path in copy:copy.img zc:ext4/zc.img; do
    cat >"/work/${path%%:*}.toml" <<TOML
version = 1
[device]
name = "b${path%%:*}"
top = "f"
queues = 1
[layers.f]
type = "file"
path = "${path#*:}"
TOML
done

# one PATH MODE PATTERN: up (batch MODE), check, fio, down; appends a BENCH line.
one() {
    local path=$1 mode=$2 pattern=$3 iops
    UBLK_STACK_BATCH_IO=$mode up_device "/work/$path.toml"
    save_status "b$path"
    if [[ $mode == on ]]; then
        grep -q '"BATCH_IO"' /work/status.json || fail "b$path: not in batch mode"
    else
        grep -q '"BATCH_IO"' /work/status.json && fail "b$path: batch mode with off"
    fi
    [[ $path == zc ]] && { grep -q '"data_path":"zero-copy"' /work/status.json || fail "bzc: not zero copy"; }
    iops=$(bench_iops "$DEV" "$pattern")
    echo "BENCH $path-$pattern-$mode-round$round iops=$iops load=$(cut -d' ' -f1 /proc/loadavg)" |
        tee -a "/work/$path-$pattern-$mode.bench"
    down_device "b$path"
}

for round in $(seq "$rounds"); do
    step "round $round"
    for path in copy zc; do
        for pattern in randread randwrite; do
            one "$path" on "$pattern"
            one "$path" off "$pattern"
        done
    done
done
for path in copy zc; do
    for pattern in randread randwrite; do
        b=$(bench_median "/work/$path-$pattern-on.bench")
        t=$(bench_median "/work/$path-$pattern-off.bench")
        [[ -n $b && -n $t ]] || fail "missing measurements"
        awk -v b="$b" -v t="$t" -v n="$rounds" -v l="$path-$pattern" 'BEGIN {
            printf "BENCH batch %s-4k-qd32 rounds=%d batch=%d per_tag=%d ratio=%.2f\n", l, n, b, t, b / t
        }'
    done
done
umount /work/ext4
losetup -d "$ext4_loop"
step ok
