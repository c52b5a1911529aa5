# Guest side of benches/vm/zero_copy_run.sh (run by tests/vm/run.sh inside the
# 7.3 VM, whose ublk driver offers AUTO_BUF_REG).
#
# 4 KiB random reads at QD32 (fio, io_uring, O_DIRECT) of one 512 MiB file on
# the guest's tmpfs, served three ways in the same boot:
#   zc      ublk-stack, a `file` leaf, zero copy (UBLK_STACK_ZERO_COPY=on:
#           AUTO_BUF_REG; since user copy, requests up to 32 KiB, these
#           4 KiB reads among them, go by USER_COPY: src/ublk/user_copy.rs)
#   copy    the same with UBLK_STACK_ZERO_COPY=off (the kernel copies)
#   loop    /dev/loopN, the kernel loop driver
# Rounds alternate the three so that drift on the shared host hits all alike;
# the medians and the ratios go to the BENCH lines.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

rounds=${BENCH_ROUNDS:-5}
export BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-5}

# Written, not sparse: reads of holes take a cheaper path than real pages.
dd if=/dev/zero of=/work/backing.img bs=1M count=512 status=none
cat >/work/zc.toml <<'TOML'
version = 1
[device]
name = "zc"
top = "f"
[layers.f]
type = "file"
path = "backing.img"
TOML

# serve MODE LABEL: up in MODE (on or off), check the data path, bench, down.
serve() {
    local mode=$1 label=$2 want=zero-copy
    [[ $mode == off ]] && want=copy
    UBLK_STACK_ZERO_COPY=$mode up_device /work/zc.toml
    ublk-stack status zc --json | grep -q "\"data_path\":\"$want\"" || fail "$label: not $want"
    bench_randread "$DEV" "$label-round$round" | tee -a "/work/$label.bench"
    down_device zc
}

loop=$(losetup -f --show /work/backing.img)
for round in $(seq "$rounds"); do
    step "round $round"
    serve on zc
    serve off copy
    bench_randread "$loop" "loop-round$round" | tee -a /work/loop.bench
done
losetup -d "$loop"

zc=$(bench_median /work/zc.bench)
copy=$(bench_median /work/copy.bench)
loop_iops=$(bench_median /work/loop.bench)
[[ -n $zc && -n $copy && -n $loop_iops ]] || fail "missing measurements"
awk -v z="$zc" -v c="$copy" -v l="$loop_iops" -v n="$rounds" 'BEGIN {
    printf "BENCH zero-copy randread-4k-qd32 rounds=%d zc=%d copy=%d loop=%d\n", n, z, c, l
    printf "BENCH ratio zc/copy=%.2f zc/loop=%.2f copy/loop=%.2f\n", z / c, z / l, c / l
}'
step ok
