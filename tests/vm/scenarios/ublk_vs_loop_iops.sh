# 4 KiB random-read IOPS at QD32 of a ublk device with one file leaf on tmpfs
# against /dev/loopN on the same file, in the same boot; prints both and the ratio.
# A measurement, not a threshold: it passes when both runs complete.
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

step "ublk"
up_device /work/iops.toml
bench_randread "$DEV" ublk-file-tmpfs | tee /work/ublk.bench
down_device iops

step "loop on the same file"
loop=$(losetup -f --show /work/backing.img)
bench_randread "$loop" loop-tmpfs | tee /work/loop.bench
losetup -d "$loop"

ublk_iops=$(sed -n 's/.* iops=\([0-9.]*\).*/\1/p' /work/ublk.bench)
loop_iops=$(sed -n 's/.* iops=\([0-9.]*\).*/\1/p' /work/loop.bench)
[[ -n $ublk_iops && -n $loop_iops ]] || fail "missing measurements"
awk -v u="$ublk_iops" -v l="$loop_iops" \
    'BEGIN { printf "BENCH ratio ublk/loop randread-4k-qd32 ublk_iops=%d loop_iops=%d ratio=%.2f\n", u, l, u / l }'
step "ok"
