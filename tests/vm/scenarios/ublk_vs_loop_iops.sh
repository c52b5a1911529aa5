# 4 KiB random-read IOPS at QD32 of a ublk device with one file leaf on tmpfs
# against /dev/loopN on the same file, in the same boot: three alternating rounds
# each (the host is shared, so single runs are noisy), medians and their ratio.
# A measurement, not a threshold: it passes when every run completes. The guest
# CPU is qemu's `max`, whose byte-at-a-time `rep movsb` emulation weighs on
# ublk's user-memory copies; benches/vm/ measures without it and against rublk.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash

# Written, not sparse, as in bench/loop.sh: holes take a cheaper read path.
dd if=/dev/zero of=/work/backing.img bs=1M count=512 status=none
cat >/work/iops.toml <<'TOML'
version = 1
[device]
name = "iops"
top = "f"
[layers.f]
type = "file"
path = "backing.img"
TOML

up_device /work/iops.toml
loop=$(losetup -f --show /work/backing.img)
export BENCH_RUNTIME_S=${BENCH_RUNTIME_S:-5}
for round in 1 2 3; do
    step "round $round"
    bench_randread "$DEV" "ublk-file-tmpfs-round$round" | tee -a /work/ublk.bench
    bench_randread "$loop" "loop-tmpfs-round$round" | tee -a /work/loop.bench
done
losetup -d "$loop"
down_device iops

ublk_iops=$(bench_median /work/ublk.bench)
loop_iops=$(bench_median /work/loop.bench)
[[ -n $ublk_iops && -n $loop_iops ]] || fail "missing measurements"
awk -v u="$ublk_iops" -v l="$loop_iops" \
    'BEGIN { printf "BENCH ratio ublk/loop randread-4k-qd32 median_ublk_iops=%d median_loop_iops=%d ratio=%.2f\n", u, l, u / l }'
step "ok"
