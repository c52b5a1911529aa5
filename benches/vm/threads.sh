# Guest side of benches/vm/threads_run.sh (run by tests/vm/run.sh inside the
# 7.3 VM, whose ublk driver lets several threads serve one queue).
#
# 4 KiB random reads and writes at QD32 (fio, io_uring, O_DIRECT, one job) on
# a file leaf served three ways: one queue with one thread (q1t1), one queue
# with two threads (q1t2, UBLK_STACK_QUEUE_THREADS=2) and two queues with one
# thread each (q2t1); in copy mode (a 256 MiB file on tmpfs) and zero copy (a
# 256 MiB file on ext4 over a loop device). Rounds alternate the three so that
# drift on the shared host hits them alike; the medians and the ratios to
# q1t1 go to the BENCH lines.
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
    for queues in 1 2; do
        cat >"/work/${path%%:*}-q$queues.toml" <<TOML
version = 1
[device]
name = "t${path%%:*}"
top = "f"
queues = $queues
[layers.f]
type = "file"
path = "${path#*:}"
TOML
    done
done

# one PATH MODE PATTERN: up (MODE: q1t1, q1t2, q2t1), check, fio, down;
# appends a BENCH line.
one() {
    local path=$1 mode=$2 pattern=$3 iops queues=${2:1:1} threads=${2:3:1}
    UBLK_STACK_QUEUE_THREADS=$threads up_device "/work/$path-q$queues.toml"
    save_status "t$path"
    if ((threads > 1)); then
        grep -q '"PER_IO_DAEMON"' /work/status.json || fail "t$path: one thread per queue"
    else
        grep -q '"PER_IO_DAEMON"' /work/status.json && fail "t$path: several threads with 1"
    fi
    [[ $path == zc ]] && { grep -q '"data_path":"zero-copy"' /work/status.json || fail "tzc: not zero copy"; }
    iops=$(bench_iops "$DEV" "$pattern")
    echo "BENCH $path-$pattern-$mode-round$round iops=$iops load=$(cut -d' ' -f1 /proc/loadavg)" |
        tee -a "/work/$path-$pattern-$mode.bench"
    down_device "t$path"
}

for round in $(seq "$rounds"); do
    step "round $round"
    for path in copy zc; do
        for pattern in randread randwrite; do
            for mode in q1t1 q1t2 q2t1; do
                one "$path" "$mode" "$pattern"
            done
        done
    done
done
for path in copy zc; do
    for pattern in randread randwrite; do
        a=$(bench_median "/work/$path-$pattern-q1t1.bench")
        b=$(bench_median "/work/$path-$pattern-q1t2.bench")
        c=$(bench_median "/work/$path-$pattern-q2t1.bench")
        [[ -n $a && -n $b && -n $c ]] || fail "missing measurements"
        awk -v a="$a" -v b="$b" -v c="$c" -v n="$rounds" -v l="$path-$pattern" 'BEGIN {
            printf "BENCH threads %s-4k-qd32 rounds=%d q1t1=%d q1t2=%d q2t1=%d q1t2/q1t1=%.2f q2t1/q1t1=%.2f q1t2/q2t1=%.2f\n",
                l, n, a, b, c, b / a, c / a, b / c
        }'
    done
done
umount /work/ext4
losetup -d "$ext4_loop"
step ok
