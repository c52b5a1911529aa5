#!/usr/bin/env bash
# ublk-stack's NBD server next to qemu-nbd and nbdkit, on the same tmpfs file,
# driven by fio's nbd engine (libnbd, one connection per job):
#
#   bash benches/nbd/run.sh                 # needs: bash tests/nbd/setup.sh; cargo build --release
#
# Patterns: 4K randread QD32, 4K randwrite QD32, 1M seqread QD8. Each round runs
# every (pattern, server) pair once, servers alternating, so drift on a shared
# machine hits all of them alike; the table shows the median over rounds and the
# ratio ours / theirs. Then the same for an encrypted stack: ublk-stack's crypt
# layer (AES-256-GCM, over a file leaf) against qemu-nbd serving a LUKS image
# (qemu-img create -f luks, AES-256-XTS).
#
# Environment: ROUNDS (3), SECONDS_PER_RUN (3), SIZE_MIB (256), BIN (the
# ublk-stack binary; default target/release/ublk-stack). Servers listen only
# on unix sockets in a private temporary folder.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${BIN:-$repo/target/release/ublk-stack}
rounds=${ROUNDS:-3}
secs=${SECONDS_PER_RUN:-3}
size_mib=${SIZE_MIB:-256}

for tool in fio qemu-nbd qemu-img nbdkit python3; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool missing (bash tests/nbd/setup.sh)" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "run.sh: this fio has no nbd engine" >&2; exit 1; }
[[ -x $bin ]] || { echo "run.sh: $bin missing (cargo build --release)" >&2; exit 1; }

work=$(mktemp -d /tmp/nbd-bench.XXXXXX)
shm=$(mktemp -d /dev/shm/nbd-bench.XXXXXX)
pids=()
declare -A server_pid
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work" "$shm"
}
trap cleanup EXIT
export UBLK_STACK_RUN_DIR=$work/run

wait_socket() {
    for _ in $(seq 100); do [[ -S $1 ]] && return 0; sleep 0.05; done
    echo "run.sh: no server at $1" >&2
    exit 1
}

# serve NAME: start server NAME on $work/NAME.sock.
serve() {
    local name=$1 sock=$work/$1.sock
    case $name in
    ours | ours-crypt)
        "$bin" up "$work/$name.toml" --nbd "unix:$sock" >"$work/$name.log" 2>&1 &
        ;;
    qemu-nbd)
        qemu-nbd -f raw -t -k "$sock" "$shm/plain.img" >"$work/$name.log" 2>&1 &
        ;;
    nbdkit)
        nbdkit -f -U "$sock" file "file=$shm/plain.img" >"$work/$name.log" 2>&1 &
        ;;
    qemu-luks)
        qemu-nbd -t -k "$sock" --object secret,id=sec0,data=benchpass \
            --image-opts "driver=luks,key-secret=sec0,file.filename=$shm/luks.img" >"$work/$name.log" 2>&1 &
        ;;
    esac
    pids+=($!)
    server_pid[$name]=$!
    wait_socket "$sock"
}

# CPU time (user + system, clock ticks) the server process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/${server_pid[$1]}/stat"; }

# run SERVER PATTERN: prints "RATE CPU" — IOPS (4K) or MiB/s (1M), and the
# server's CPU microseconds per request (the cost that a busy, shared machine
# does not blur as much as the rate).
run() {
    local sock=$work/$1.sock args before after
    case $2 in
    randread) args=(--rw=randread --bs=4k --iodepth=32) ;;
    randwrite) args=(--rw=randwrite --bs=4k --iodepth=32) ;;
    seqread) args=(--rw=read --bs=1M --iodepth=8) ;;
    esac
    before=$(cpu_ticks "$1")
    if ! fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$sock" "${args[@]}" \
        --size=$((size_mib * 3 / 4))M --time_based --runtime="$secs" --ramp_time=0.5 \
        --output-format=json >"$work/fio.json" 2>"$work/fio.err"; then
        echo "run.sh: fio against $1 ($2) failed:" >&2
        cat "$work/fio.err" "$work/$1.log" >&2
        exit 1
    fi
    after=$(cpu_ticks "$1")
    python3 -c '
import json, os, sys
text = sys.stdin.read()
job = json.loads(text[text.index("{"):])["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] else job["read"]
rate = round(side["bw"] / 1024) if sys.argv[1] == "seqread" else round(side["iops"])
ticks = int(sys.argv[2]) - int(sys.argv[3])
ops = job["read"]["total_ios"] + job["write"]["total_ios"]
per_op_us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(ops, 1)
print(f"{rate}/{per_op_us:.1f}")' "$2" "$after" "$before" <"$work/fio.json"
}

# Leaves: the plain file on tmpfs, and for the crypt comparison a file leaf under
# crypt and a LUKS image of the same exposed size.
truncate -s "${size_mib}M" "$shm/plain.img"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/key"
chmod 600 "$work/key"
cat >"$work/ours.toml" <<TOML
version = 1
[device]
name = "bench-nbd"
top = "file"
queues = 2
[layers.file]
type = "file"
path = "$shm/plain.img"
TOML
cat >"$work/ours-crypt.toml" <<TOML
version = 1
[device]
name = "bench-nbd-crypt"
top = "crypt"
queues = 2
[layers.crypt]
type = "crypt"
over = "file"
key_file = "$work/key"
[layers.file]
type = "file"
path = "$shm/crypt.img"
size = "$((size_mib + 16))MiB"
create = true
TOML
# qemu-img times its key derivation and gives up ("Unable to get accurate CPU
# usage") when the machine is busy: try a few times.
for try in 1 2 3 4 5; do
    qemu-img create -q -f luks --object secret,id=sec0,data=benchpass -o key-secret=sec0 \
        "$shm/luks.img" "${size_mib}M" && break
    [[ $try == 5 ]] && exit 1
    sleep 1
done

for server in ours qemu-nbd nbdkit ours-crypt qemu-luks; do serve "$server"; done
# Fill both encrypted devices once so reads decrypt real data.
for server in ours-crypt qemu-luks; do
    fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$work/$server.sock" --rw=write \
        --bs=1M --iodepth=8 --size=$((size_mib * 3 / 4))M >/dev/null 2>&1
done
# The plain file is shared by three servers: fill it once (before they cache
# anything) so reads are of allocated pages.
fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$work/ours.sock" --rw=write \
    --bs=1M --iodepth=8 --size=$((size_mib * 3 / 4))M >/dev/null 2>&1

patterns=(randread randwrite seqread)
declare -A results
for round in $(seq "$rounds"); do
    for pattern in "${patterns[@]}"; do
        for server in ours qemu-nbd nbdkit ours-crypt qemu-luks; do
            results[$server.$pattern]+="$(run "$server" "$pattern") "
        done
    done
    echo "round $round done" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
rates() { tr ' ' '\n' | grep -v '^$' | cut -d/ -f1 | median; }
cpus() { tr ' ' '\n' | grep -v '^$' | cut -d/ -f2 | median; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

echo
echo "fio nbd engine, ${secs}s per run, median of $rounds alternating rounds; 4K: IOPS, 1M: MiB/s;"
echo "cpu: the server's CPU microseconds per request (user + system, all its threads)"
echo
echo "| pattern | ublk-stack | qemu-nbd | nbdkit file | ours/qemu-nbd | ours/nbdkit | cpu ours | cpu qemu-nbd | cpu nbdkit |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
label() {
    case $1 in
    randread) echo "4K randread QD32" ;;
    randwrite) echo "4K randwrite QD32" ;;
    seqread) echo "1M seqread QD8" ;;
    esac
}
for pattern in "${patterns[@]}"; do
    o=$(rates <<<"${results[ours.$pattern]}")
    q=$(rates <<<"${results[qemu-nbd.$pattern]}")
    k=$(rates <<<"${results[nbdkit.$pattern]}")
    echo "| $(label "$pattern") | $o | $q | $k | $(ratio "$o" "$q") | $(ratio "$o" "$k") |" \
        "$(cpus <<<"${results[ours.$pattern]}") | $(cpus <<<"${results[qemu-nbd.$pattern]}") |" \
        "$(cpus <<<"${results[nbdkit.$pattern]}") |"
done
echo
echo "| pattern | ublk-stack crypt | qemu-nbd LUKS | crypt/LUKS | cpu crypt | cpu LUKS |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for pattern in "${patterns[@]}"; do
    oc=$(rates <<<"${results[ours-crypt.$pattern]}")
    ql=$(rates <<<"${results[qemu-luks.$pattern]}")
    echo "| $(label "$pattern") | $oc | $ql | $(ratio "$oc" "$ql") |" \
        "$(cpus <<<"${results[ours-crypt.$pattern]}") | $(cpus <<<"${results[qemu-luks.$pattern]}") |"
done
