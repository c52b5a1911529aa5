# Guest side of benches/vm/tmpfs_write_run.sh: where the time of 4 KiB random
# writes to a file on the guest's tmpfs goes.
#
# Written 128 MiB files on the guest's tmpfs in /work/img (one per server:
# the daemon locks the files it serves), and in each round, one after another:
#   psync1 / psync2   fio psync pwrite of a plain file, 1 and 2 jobs (what a
#                     4 KiB pwrite costs here, and two writers on one file)
#   loop              /dev/loopN over a file, fio io_uring O_DIRECT QD32
#   ours-q1 / ours-q2 ublk-stack, one `file` leaf, queues = 1 / 2, same fio;
#                     configs in /work/cfg
#   ours-near         as ours-q1, its config in /work/img, next to the files
#                     (up for this run only: a daemon watches its config's
#                     folder)
#   ours-near4        the same with three more daemons (null devices) whose
#                     configs are in /work/img too, as in matrix.sh
# and, when the guest has /bin/ublk-stack-old (another build, VM_EXTRA_BINS),
# old-apart (as ours-q1), old-near and old-near4 served by that build.
# Then null devices of each build, 4 KiB random reads at QD32.
# For the ublk runs, the queue threads' CPU time and wait (schedstat), their
# context switches and the guest's CPU split are printed. Then (BENCH_PROFILE)
# a perf profile of each ublk device and a syscall count of ours-q2's daemon.
# Environment: BENCH_ROUNDS (2), BENCH_RUNTIME_S (3), BENCH_PROFILE (1).
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash
set +o pipefail # `head` closes perf's pipe early

rounds=${BENCH_ROUNDS:-2}
runtime=${BENCH_RUNTIME_S:-3}
mkdir -p /work/img /work/cfg
file=/work/img/tmpfs.img
dd if=/dev/zero of=$file bs=1M count=128 status=none
echo 0 >/proc/sys/kernel/kptr_restrict 2>/dev/null || true
echo -1 >/proc/sys/kernel/perf_event_paranoid 2>/dev/null || true

declare -A dev_of pid_of
# ours NAME QUEUES CONFIG_DIR BINARY [null]: serve a copy of the file (or a
# null leaf) as NAME.
ours() {
    local name=$1 dir=$3 out=/work/up.$1 i
    if [[ ${5:-} == null ]]; then
        printf 'version = 1\n[device]\nname = "%s"\ntop = "n"\n[layers.n]\ntype = "null"\nsize = "64MiB"\n' \
            "$name" >"$dir/$name.toml"
    else
        # The two builds' near devices take turns on one file (guest memory).
        local img=/work/img/${name#old-}.img
        [[ -e $img ]] || cp $file "$img"
        printf 'version = 1\n[device]\nname = "%s"\ntop = "f"\nqueues = %s\n[layers.f]\ntype = "file"\npath = "%s"\n' \
            "$name" "$2" "$img" >"$dir/$name.toml"
    fi
    "$4" up "$dir/$name.toml" >"$out" 2>>/work/daemon.err &
    pid_of[$name]=$!
    for i in $(seq 600); do
        grep -q ' ready (' "$out" && break
        sleep 0.1
    done
    dev_of[$name]=$(awk '/ ready \(/ {print $2}' "$out")
    [[ -b ${dev_of[$name]} ]] || { cat /work/daemon.err >&2; fail "$name: no device"; }
}
down() { # NAME...
    local name
    for name; do
        ublk-stack down "$name"
        wait "${pid_of[$name]}"
    done
}

# threads PID: "name run_ns wait_ns slices vol nonvol" per queue thread.
threads() {
    local t
    for t in /proc/"$1"/task/*; do
        [[ $(cat "$t/comm") == ublk*-q* ]] || continue
        echo "$(cat "$t/comm") $(cat "$t/schedstat")" \
            "$(awk '/^voluntary_ctxt/ {v = $2} /^nonvoluntary_ctxt/ {n = $2} END {print v, n}' "$t/status")"
    done
}
cpu() { awk '/^cpu / {print $2 + $3, $4, $5, $6, $7 + $8}' /proc/stat; } # user sys idle iowait irq

# fio_iops LABEL ARGS...: one fio run, prints its write IOPS.
fio_iops() {
    local label=$1 iops
    iops=$(fio --name=w --rw=randwrite --bs=4k --size=128m --time_based --runtime="$runtime" \
        --ramp_time=1 --output-format=terse --terse-version=3 --group_reporting "${@:2}" |
        awk -F';' '{print $49}')
    echo "BENCH RUN $label round=$round iops=$iops"
    echo "$label $iops" >>/work/results
}

# ublk_run LABEL PID DEV: fio at QD32 on DEV, with the queue threads' use of the CPU.
ublk_run() {
    local label=$1 pid=$2 dev=$3
    threads "$pid" >/work/t0
    local c0 c1
    c0=$(cpu)
    fio_iops "$label" --filename="$dev" --ioengine=io_uring --direct=1 --iodepth=32
    c1=$(cpu)
    threads "$pid" >/work/t1
    # Deltas over the whole fio run (ramp included).
    awk -v l="$label" 'NR == FNR { a[$1] = $0; next } $1 in a {
        split(a[$1], x, " ")
        printf "BENCH THREAD %s %s run_ms=%.0f wait_ms=%.0f slices=%d vol_cs=%d invol_cs=%d\n",
            l, $1, ($2 - x[2]) / 1e6, ($3 - x[3]) / 1e6, $4 - x[4], $5 - x[5], $6 - x[6] }' /work/t0 /work/t1
    awk -v l="$label" -v a="$c0" -v b="$c1" 'BEGIN { split(a, x, " "); split(b, y, " ")
        printf "BENCH CPU %s user=%d sys=%d idle=%d iowait=%d irq=%d (jiffies, both CPUs)\n", l,
            y[1] - x[1], y[2] - x[2], y[3] - x[3], y[4] - x[4], y[5] - x[5] }'
}

: >/work/results
loopdev=$(losetup -f --show --direct-io=on "$file")
ours q1 1 /work/cfg ublk-stack
ours q2 2 /work/cfg ublk-stack
ublk-stack status q1 --json | grep -o '"data_path":"[a-z-]*"' | sed 's/^/BENCH INFO q1 /'
old=
if [[ -x /bin/ublk-stack-old ]]; then
    old=1
    ours old-apart 1 /work/cfg ublk-stack-old
fi

for round in $(seq "$rounds"); do
    step "round $round"
    fio_iops psync1 --filename=$file --ioengine=psync --numjobs=1
    fio_iops psync2 --filename=$file --ioengine=psync --numjobs=2
    fio_iops loop --filename="$loopdev" --ioengine=io_uring --direct=1 --iodepth=32
    for name in q1 q2 ${old:+old-apart}; do
        ublk_run "ours-$name" "${pid_of[$name]}" "${dev_of[$name]}"
    done
    for build in ublk-stack ${old:+ublk-stack-old}; do
        [[ $build == ublk-stack ]] && label=near || label=old-near
        ours "$label" 1 /work/img "$build"
        ublk_run "ours-$label" "${pid_of[$label]}" "${dev_of[$label]}"
        for i in 1 2 3; do ours "null$i" 1 /work/img "$build" null; done
        ublk_run "ours-${label}4" "${pid_of[$label]}" "${dev_of[$label]}"
        down "$label" null1 null2 null3
    done
done
# Null devices: 4 KiB random reads at QD32 (the null leaf zeroes a tag
# buffer only when it does not know it to be zero already).
ours null-new 1 /work/cfg ublk-stack null
[[ -z $old ]] || ours null-old 1 /work/cfg ublk-stack-old null
for round in $(seq "$rounds"); do
    for name in null-new ${old:+null-old}; do
        iops=$(fio --name=n --filename="${dev_of[$name]}" --ioengine=io_uring --direct=1 \
            --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$runtime" --ramp_time=1 \
            --output-format=terse --terse-version=3 | awk -F';' '{print $8}')
        echo "BENCH RUN $name round=$round iops=$iops"
        echo "$name $iops" >>/work/results
    done
done
down null-new ${old:+null-old}
awk '{s[$1] = s[$1] " " $2} END {for (k in s) print "BENCH ALL", k, s[k]}' /work/results

if [[ ${BENCH_PROFILE:-1} == 1 ]]; then
    for d in "q1 ${dev_of[q1]}" "q2 ${dev_of[q2]}" "loop $loopdev"; do
        read -r label dev <<<"$d"
        fio --name=p --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
            --iodepth=32 --time_based --runtime=8 --output-format=terse >/dev/null &
        fpid=$!
        sleep 2
        perf record -a -g -F 499 -o "/work/$label.data" -- sleep 4 >/dev/null 2>&1
        wait $fpid
        perf report -i "/work/$label.data" --stdio --no-children --sort comm,dso -g none 2>/dev/null |
            grep '%' | head -10 | sed "s/^/BENCH PROFILE $label /"
        perf report -i "/work/$label.data" --stdio --no-children --sort sym -g none 2>/dev/null |
            grep '%' | head -30 | sed "s/^/BENCH PROFILE $label /"
    done
    # Syscalls of the queue threads of ours-q2 for 3 s of fio.
    fio --name=s --filename="${dev_of[q2]}" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
        --iodepth=32 --time_based --runtime=6 --output-format=terse >/work/s.fio &
    fpid=$!
    sleep 1
    timeout -s INT 3 strace -c -f -p "${pid_of[q2]}" -o /work/strace.txt || true
    wait $fpid
    sed 's/^/BENCH STRACE /' /work/strace.txt
fi

down q1 q2 ${old:+old-apart}
losetup -d "$loopdev"
step ok
