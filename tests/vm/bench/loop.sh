#!/bin/bash
# Baseline for ublk: 4 KiB random-read IOPS of /dev/loopN over a tmpfs file,
# three runs. Not a pass/fail test; run it with
#   tests/vm/run.sh - tests/vm/bench/loop.sh
. /vmtest/lib.sh

size_mib=512
# Written, not sparse: reads of holes in tmpfs take a cheaper path than real pages.
dd if=/dev/zero of=/work/backing.img bs=1M count=$size_mib status=none
dev=$(losetup -f --show /work/backing.img)
for run in 1 2 3; do
    bench_randread "$dev" "loop-tmpfs-run$run"
done
losetup -d "$dev"
