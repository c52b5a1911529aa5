# Guest side of benches/vm/run.sh (run by tests/vm/run.sh inside the 6.12 VM).
#
# 4 KiB random reads at QD32 (fio, io_uring, O_DIRECT) of one 512 MiB file on
# the guest's tmpfs, served four ways in the same boot:
#   loop        /dev/loopN, the kernel loop driver
#   ours-q1     ublk-stack, a `file` leaf, 1 queue
#   ours        ublk-stack, a `file` leaf, the default queue count
#   rublk       rublk's loop target (libublk-rs), its defaults (1 queue)
# Rounds alternate the servers so that drift on the shared host hits all alike;
# the medians and the ratios ours / theirs go to the BENCH lines.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

rounds=${BENCH_ROUNDS:-3}
export BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-5}

# Written, not sparse: reads of holes take a cheaper path than real pages.
dd if=/dev/zero of=/work/backing.img bs=1M count=512 status=none
for q in 1 default; do
    {
        echo 'version = 1'
        echo '[device]'
        echo "name = \"ours$q\""
        echo 'top = "f"'
        [[ $q == default ]] || echo "queues = $q"
        echo '[layers.f]'
        echo 'type = "file"'
        echo 'path = "backing.img"'
    } >/work/ours-$q.toml
done

rublk_up() {
    # --foreground keeps rublk a child of this shell, so stopping it is a kill.
    # Its loop target opens the file with O_DIRECT by default; tmpfs accepts that
    # on 6.12, and the data path is the same page copy either way.
    rublk add loop -n 7 -f /work/backing.img --foreground >/work/rublk.log 2>&1 &
    RUBLK_PID=$!
    wait_for /dev/ublkb7 30
}

rublk_down() {
    rublk del -n 7 >>/work/rublk.log 2>&1 || kill "$RUBLK_PID"
    wait "$RUBLK_PID" 2>/dev/null || true
    local i
    for i in $(seq 50); do [[ -e /dev/ublkb7 ]] || return 0; sleep 0.1; done
    fail "rublk device did not go away"
}

loop=$(losetup -f --show /work/backing.img)
for round in $(seq "$rounds"); do
    step "round $round"
    bench_randread "$loop" "loop-round$round" | tee -a /work/loop.bench
    up_device /work/ours-1.toml
    bench_randread "$DEV" "ours-q1-round$round" | tee -a /work/ours-q1.bench
    down_device ours1
    up_device /work/ours-default.toml
    bench_randread "$DEV" "ours-round$round" | tee -a /work/ours.bench
    down_device oursdefault
    rublk_up
    bench_randread /dev/ublkb7 "rublk-round$round" | tee -a /work/rublk.bench
    rublk_down
done
losetup -d "$loop"

loop_iops=$(bench_median /work/loop.bench)
q1_iops=$(bench_median /work/ours-q1.bench)
ours_iops=$(bench_median /work/ours.bench)
rublk_iops=$(bench_median /work/rublk.bench)
[[ -n $loop_iops && -n $q1_iops && -n $ours_iops && -n $rublk_iops ]] || fail "missing measurements"
awk -v l="$loop_iops" -v q="$q1_iops" -v o="$ours_iops" -v r="$rublk_iops" -v n="$rounds" 'BEGIN {
    printf "BENCH peers randread-4k-qd32 rounds=%d loop=%d ours_q1=%d ours=%d rublk=%d\n", n, l, q, o, r
    printf "BENCH ratio ours/loop=%.2f ours_q1/loop=%.2f ours/rublk=%.2f ours_q1/rublk=%.2f rublk/loop=%.2f\n", o / l, q / l, o / r, q / r, r / l
}'
step ok
