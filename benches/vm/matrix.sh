# Guest side of benches/vm/matrix_run.sh (run by tests/vm/run.sh inside the
# 6.12 or 7.3 VM, with a blank virtio disk as /dev/vda).
#
# One written 512 MiB file on each of two backings, the guest's tmpfs and an
# ext4 file system on the virtio disk, served several ways at once:
#   loop       /dev/loopN, `losetup --direct-io=on` (the kernel says in
#              /sys/block/loopN/loop/dio whether it took it)
#   ours       ublk-stack, one `file` leaf, its defaults (the data path it
#              chose is printed from `status --json`)
#   ours-d     the same with `direct = true` (disk only; a second file of the
#              same size, since the daemon locks the files it serves)
#   rublk      rublk's loop target, its defaults (1 queue, O_DIRECT)
# and a null device of each server (ours `null`, rublk `null`). fio (io_uring,
# O_DIRECT, one job) runs every pattern of BENCH_PATTERNS on every device; in
# each round the devices alternate inside each pattern, so drift on the shared
# host hits all alike. Each run prints a RUN line; the end prints the medians
# over the rounds and the medians of the per-round ratios as markdown tables
# (BENCH lines, copied out by tests/vm/run.sh).
#
# Environment: BENCH_ROUNDS (3), BENCH_RUNTIME_S (3), BENCH_RAMP_S (1),
# BENCH_PATTERNS (all of: rr4k rw4k sr64k sr1m sw1m lat null),
# BENCH_BACKINGS (tmpfs disk), BENCH_OURS_QUEUES (the daemon's default, 2 here:
# `queues` of the file devices). Patterns: rr4k / rw4k 4 KiB random read / write
# at QD32; sr64k, sr1m sequential reads of 64 KiB / 1 MiB at QD8; sw1m
# sequential 1 MiB writes at QD8; lat 4 KiB random reads at QD1 (p50, p99,
# p99.9 of the completion latency); null 4 KiB random reads at QD32 of the null
# devices; rrNk / rwNk (rr16k, say) N KiB random reads / writes at QD32,
# outside the default list. BENCH_OURS_X (VAR=VALUE words, separated by commas): on tmpfs only, a
# fifth device `ours-x`, ours again on a file of its own with that environment
# (UBLK_STACK_ZERO_COPY=off, say), for an A/B in one boot; a last table gives
# ours-x/ours.
. /vmtest/lib.sh

rounds=${BENCH_ROUNDS:-3}
runtime=${BENCH_RUNTIME_S:-3}
ramp=${BENCH_RAMP_S:-1}
# Lists are separated by commas or spaces (the VM's environment holds no spaces).
IFS=', ' read -ra patterns <<<"${BENCH_PATTERNS:-rr4k rw4k sr64k sr1m sw1m lat null}"
IFS=', ' read -ra backings <<<"${BENCH_BACKINGS:-tmpfs disk}"
results=/work/results
: >"$results"

# pattern NAME: fio's rw, bs and iodepth for it.
pattern() {
    case $1 in
    rr4k | null) echo "randread 4k 32" ;;
    rw4k) echo "randwrite 4k 32" ;;
    sr64k) echo "read 64k 8" ;;
    sr1m) echo "read 1m 8" ;;
    sw1m) echo "write 1m 8" ;;
    lat) echo "randread 4k 1" ;;
    rr[0-9]*k) echo "randread ${1#rr} 32" ;;
    rw[0-9]*k) echo "randwrite ${1#rw} 32" ;;
    *) fail "unknown pattern $1" ;;
    esac
}

# run BACKING PATTERN LABEL DEVICE: one fio run; appends
# "BACKING PATTERN LABEL ROUND IOPS KIB_S P50_US P99_US P999_US" to $results.
run() {
    local backing=$1 pat=$2 label=$3 dev=$4 rw bs qd terse line
    read -r rw bs qd <<<"$(pattern "$pat")"
    terse=$(fio --name=m --filename="$dev" --ioengine=io_uring --direct=1 \
        --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 --size=512m \
        --time_based --runtime="$runtime" --ramp_time="$ramp" \
        --percentile_list=50:99:99.9 --output-format=terse --terse-version=3)
    # terse v3: read bw KiB/s $7, IOPS $8, clat percentiles $18.. ("50.000000%=N", us);
    # write bw $48, IOPS $49, its clat percentiles $59..
    line=$(awk -F';' -v b="$backing" -v p="$pat" -v l="$label" -v r="$round" '
        function pct(f) { sub(/.*=/, "", f); return f }
        {
            if ($49 > $8) { iops = $49; bw = $48; o = 59 } else { iops = $8; bw = $7; o = 18 }
            printf "%s %s %s %s %d %d %s %s %s\n", b, p, l, r, iops, bw, pct($o), pct($(o + 1)), pct($(o + 2))
        }' <<<"$terse")
    echo "BENCH RUN $line"
    echo "$line" >>"$results"
}

# Daemons: started in the background, all up for the whole run (idle ones
# wait in the kernel and cost nothing).
declare -A dev_of pid_of
ours_up() { # NAME CONFIG [VAR=VALUE...]
    local name=$1 out i path
    out=/work/up.$name
    env "${@:3}" ublk-stack up "$2" >"$out" 2>>/work/daemon.err &
    pid_of[$name]=$!
    for i in $(seq 600); do
        grep -q ' ready (' "$out" && break
        kill -0 "${pid_of[$name]}" 2>/dev/null || { cat /work/daemon.err >&2; fail "$name exited"; }
        sleep 0.1
    done
    grep ' ready (' "$out" || fail "$name: no ready line"
    dev_of[$name]=$(awk '{print $2}' "$out")
    path=$(ublk-stack status "$name" --json | sed -n 's/.*"data_path":"\([a-z-]*\)".*/\1/p')
    echo "BENCH INFO $name data_path=$path max_sectors_kb=$(cat "/sys/block/${dev_of[$name]#/dev/}/queue/max_sectors_kb")"
    echo "$name $path" >>/work/paths
}
rublk_up() { # NAME ID TARGET ARG...
    local name=$1 id=$2
    rublk add "$3" -n "$id" "${@:4}" --foreground >"/work/rublk.$name.log" 2>&1 &
    pid_of[$name]=$!
    wait_for "/dev/ublkb$id" 30
    dev_of[$name]=/dev/ublkb$id
}
file_toml() { # NAME PATH DIRECT
    {
        printf 'version = 1\n[device]\nname = "%s"\ntop = "f"\n' "$1"
        [[ -z ${BENCH_OURS_QUEUES:-} ]] || echo "queues = $BENCH_OURS_QUEUES"
        printf '[layers.f]\ntype = "file"\npath = "%s"\ndirect = %s\n' "$2" "$3"
    } >"/work/$1.toml"
}

step "setup"
: >/work/paths
declare -A devs # backing -> the labels served on it, in run order
for backing in "${backings[@]}"; do
    case $backing in
    tmpfs)
        file=/work/tmpfs.img
        ;;
    disk)
        [[ -b /dev/vda ]] || fail "no virtio disk (matrix_run.sh adds one)"
        mkfs.ext4 -q -F /dev/vda
        mkdir -p /mnt/disk
        mount /dev/vda /mnt/disk
        file=/mnt/disk/disk.img
        ;;
    *) fail "unknown backing $backing" ;;
    esac
    # Written, not sparse: reads of holes take a cheaper path than real pages.
    dd if=/dev/zero of="$file" bs=1M count=512 conv=fsync status=none
    loopdev=$(losetup -f --show --direct-io=on "$file")
    echo "BENCH INFO loop-$backing $loopdev dio=$(cat "/sys/block/${loopdev#/dev/}/loop/dio") max_sectors_kb=$(cat "/sys/block/${loopdev#/dev/}/queue/max_sectors_kb")"
    echo "loop-$backing dio=$(cat "/sys/block/${loopdev#/dev/}/loop/dio")" >>/work/paths
    dev_of[loop-$backing]=$loopdev
    file_toml "ours-$backing" "$file" false
    ours_up "ours-$backing" "/work/ours-$backing.toml"
    devs[$backing]="loop-$backing ours-$backing"
    if [[ $backing == tmpfs && -n ${BENCH_OURS_X:-} ]]; then
        IFS=',' read -ra x_env <<<"$BENCH_OURS_X"
        echo "BENCH INFO ours-x-tmpfs: ${x_env[*]}"
        dd if=/dev/zero of=/work/tmpfs-x.img bs=1M count=512 status=none
        file_toml ours-x-tmpfs /work/tmpfs-x.img false
        ours_up ours-x-tmpfs /work/ours-x-tmpfs.toml "${x_env[@]}"
        devs[$backing]+=" ours-x-tmpfs"
    fi
    if [[ $backing == disk ]]; then
        # Its own file: the daemon locks the files it serves.
        dd if=/dev/zero of=/mnt/disk/disk-d.img bs=1M count=512 conv=fsync status=none
        file_toml ours-d-disk /mnt/disk/disk-d.img true
        ours_up ours-d-disk /work/ours-d-disk.toml
        devs[$backing]+=" ours-d-disk"
    fi
    [[ $backing == tmpfs ]] && id=7 || id=8
    rublk_up "rublk-$backing" "$id" loop -f "$file"
    devs[$backing]+=" rublk-$backing"
done
if [[ " ${patterns[*]} " == *" null "* ]]; then
    printf 'version = 1\n[device]\nname = "ours-null"\ntop = "n"\n[layers.n]\ntype = "null"\nsize = "512MiB"\n' >/work/ours-null.toml
    ours_up ours-null /work/ours-null.toml
    rublk_up rublk-null 9 null
fi
ls -l /dev/ublkb* /dev/loop[0-9]

for round in $(seq "$rounds"); do
    step "round $round"
    for pat in "${patterns[@]}"; do
        if [[ $pat == null ]]; then
            run null null ours "${dev_of[ours-null]}"
            run null null rublk "${dev_of[rublk-null]}"
            continue
        fi
        for backing in "${backings[@]}"; do
            for name in ${devs[$backing]}; do
                run "$backing" "$pat" "${name%-"$backing"}" "${dev_of[$name]}"
            done
        done
    done
done

step "teardown"
for name in "${!pid_of[@]}"; do
    case $name in
    ours-*) ublk-stack down "$name" || fail "down $name" ;;
    rublk-*) rublk del -n "${dev_of[$name]#/dev/ublkb}" >>"/work/rublk.$name.log" 2>&1 || kill "${pid_of[$name]}" ;;
    esac
done
for name in "${!pid_of[@]}"; do
    rc=0
    wait "${pid_of[$name]}" || rc=$?
    [[ $rc == 0 || $name == rublk-* ]] || fail "$name exited $rc at the end"
done
for backing in "${backings[@]}"; do losetup -d "${dev_of[loop-$backing]}"; done

# Tables. Medians over the rounds of each device's figure; ratios are the
# median over the rounds of the ratio within each round (devices in one round
# ran next to each other), printed bold when the target is met (ours/loop >=
# 1.0, ours/rublk >= 1.3).
awk -v paths="$(tr '\n' ';' </work/paths)" '
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function ratio(b, p, x, y, target,    r, list, v) {
    list = ""
    for (r = 1; r <= rounds; r++) if (has(b, p, x, r) && has(b, p, y, r) && iops[b, p, y, r] > 0)
        list = list " " iops[b, p, x, r] / iops[b, p, y, r]
    if (list == "") return "–"
    v = median(list) + 0
    return sprintf(v >= target ? "**%.2f**" : "%.2f", v)
}
function fig(b, p, d, field,    r, list) {
    list = ""
    for (r = 1; r <= rounds; r++) if (has(b, p, d, r)) list = list " " val[field, b, p, d, r]
    if (list == "") return "–"
    return median(list)
}
function has(b, p, d, r,    key) { key = b SUBSEP p SUBSEP d SUBSEP r; return key in iops }
function num(x,    s) { # thousands separated by commas
    if (x == "–") return x
    s = sprintf("%d", x)
    while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s)
    return s
}
function shown(b, p, d,    v) {
    # IOPS for 4 KiB patterns, MB/s (10^6 bytes) for the sequential ones.
    v = fig(b, p, d, "iops")
    if (v == "–") return v
    return p ~ /^s/ ? sprintf("%.0f MB/s", fig(b, p, d, "bw") * 0.001024) : num(v)
}
{
    b = $1; p = $2; d = $3; r = $4
    iops[b, p, d, r] = $5
    val["iops", b, p, d, r] = $5; val["bw", b, p, d, r] = $6
    val["p50", b, p, d, r] = $7; val["p99", b, p, d, r] = $8; val["p999", b, p, d, r] = $9
    if (r > rounds) rounds = r
    if (p == "lat") haslat = 1
    key = b SUBSEP p
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
}
END {
    split(paths, pl, ";")
    for (i in pl) if (pl[i] != "") print "BENCH path " pl[i]
    print "BENCH "
    print "BENCH | backing | pattern | loop | ours | ours-d | rublk | ours/loop | ours/rublk | ours-d/loop | ours-d/rublk |"
    print "BENCH | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for (i = 1; i <= n; i++) {
        split(order[i], k, SUBSEP); b = k[1]; p = k[2]
        if (p == "lat" || p == "null") continue
        printf "BENCH | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", b, p,
            shown(b, p, "loop"), shown(b, p, "ours"), shown(b, p, "ours-d"), shown(b, p, "rublk"),
            ratio(b, p, "ours", "loop", 1.0), ratio(b, p, "ours", "rublk", 1.3),
            ratio(b, p, "ours-d", "loop", 1.0), ratio(b, p, "ours-d", "rublk", 1.3)
    }
    if (haslat) print "BENCH "
    if (haslat) print "BENCH | backing | device | IOPS | p50 µs | p99 µs | p99.9 µs | p50 vs loop | p99 vs loop | p99.9 vs loop |"
    if (haslat) print "BENCH | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for (i = 1; i <= n; i++) {
        split(order[i], k, SUBSEP); b = k[1]; p = k[2]
        if (p != "lat") continue
        split("loop ours ours-x ours-d rublk", ds, " ")
        for (j = 1; j <= 5; j++) {
            d = ds[j]
            if (fig(b, p, d, "iops") == "–") continue
            printf "BENCH | %s | %s | %s | %s | %s | %s | %.2f | %.2f | %.2f |\n", b, d,
                num(fig(b, p, d, "iops")), fig(b, p, d, "p50"), fig(b, p, d, "p99"), fig(b, p, d, "p999"),
                fig(b, p, d, "p50") / fig(b, p, "loop", "p50"), fig(b, p, d, "p99") / fig(b, p, "loop", "p99"),
                fig(b, p, d, "p999") / fig(b, p, "loop", "p999")
        }
    }
    hasx = 0
    for (i = 1; i <= n; i++) { split(order[i], k, SUBSEP); if (fig(k[1], k[2], "ours-x", "iops") != "–") hasx = 1 }
    if (hasx) {
        print "BENCH "
        print "BENCH | backing | pattern | ours | ours-x | ours-x/ours | ours-x/loop |"
        print "BENCH | --- | --- | ---: | ---: | ---: | ---: |"
        for (i = 1; i <= n; i++) {
            split(order[i], k, SUBSEP); b = k[1]; p = k[2]
            if (p == "null" || fig(b, p, "ours-x", "iops") == "–") continue
            printf "BENCH | %s | %s | %s | %s | %s | %s |\n", b, p, shown(b, p, "ours"), shown(b, p, "ours-x"),
                ratio(b, p, "ours-x", "ours", 99), ratio(b, p, "ours-x", "loop", 1.0)
        }
    }
    key = "null" SUBSEP "null"
    if (key in seen) {
        print "BENCH "
        print "BENCH | null, 4K randread QD32 | ours | rublk | ours/rublk |"
        print "BENCH | --- | ---: | ---: | ---: |"
        printf "BENCH | IOPS | %s | %s | %s |\n", num(fig("null", "null", "ours", "iops")),
            num(fig("null", "null", "rublk", "iops")), ratio("null", "null", "ours", "rublk", 1.3)
    }
}' "$results"
step ok
