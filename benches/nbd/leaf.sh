#!/usr/bin/env bash
# The `nbd` leaf as a client: a stack whose top is an nbd leaf, driven
# in-process by `ublk-stack bench`, next to fio's nbd engine (libnbd) talking
# straight to the same nbdkit memory server:
#
#   bash benches/nbd/leaf.sh        # needs: bash tests/nbd/setup.sh; cargo build --release
#
# Patterns: 4K randread QD32 and 1M seqread QD8, one connection each. Each
# round runs the leaf and fio once per pattern, alternating, so drift on a
# shared machine hits both alike; the table shows the medians and the ratio
# leaf / fio. Two links:
#   unix   nbdkit on a unix socket
#   veth   nbdkit in a network namespace of its own, over a veth pair with
#          1 ms of netem delay towards the server (needs root; when the
#          kernel has no sch_netem, the delay comes from nbdkit's delay filter
#          instead, 1 ms per request, and the table says so)
#
# Environment: ROUNDS (5), SECONDS_PER_RUN (3), SIZE_MIB (256), LINKS ("unix
# veth"), BIN (default target/release/ublk-stack).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${BIN:-$repo/target/release/ublk-stack}
rounds=${ROUNDS:-5}
secs=${SECONDS_PER_RUN:-3}
size_mib=${SIZE_MIB:-256}
links=${LINKS:-unix veth}

for tool in fio nbdkit python3; do
    command -v "$tool" >/dev/null || { echo "leaf.sh: $tool missing (bash tests/nbd/setup.sh)" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "leaf.sh: this fio has no nbd engine" >&2; exit 1; }
[[ -x $bin ]] || { echo "leaf.sh: $bin missing (cargo build --release)" >&2; exit 1; }

work=$(mktemp -d /tmp/nbd-leaf-bench.XXXXXX)
ns=nbdleafbench$$
host_if=nlbh$$
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$host_if" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# serve LINK: starts nbdkit memory for LINK and sets `uri` and `delay_note`.
serve() {
    local size=${size_mib}M
    delay_note=""
    case $1 in
    unix)
        nbdkit -f -U "$work/nbd.sock" memory "size=$size" >"$work/nbdkit.log" 2>&1 &
        pids+=($!)
        uri="nbd+unix:///?socket=$work/nbd.sock"
        for _ in $(seq 100); do [[ -S $work/nbd.sock ]] && break; sleep 0.05; done
        ;;
    veth)
        ((EUID == 0)) || { echo "leaf.sh: the veth link needs root" >&2; exit 1; }
        ip netns add "$ns"
        ip link add "$host_if" type veth peer name nlbp$$
        ip link set nlbp$$ netns "$ns"
        ip addr add 10.211.$(($$ % 250)).1/30 dev "$host_if"
        ip link set "$host_if" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add 10.211.$(($$ % 250)).2/30 dev nlbp$$
        ip -n "$ns" link set nlbp$$ up
        local peer=10.211.$(($$ % 250)).2 filter=() delays=()
        if tc qdisc add dev "$host_if" root netem delay 1ms 2>/dev/null; then
            delay_note="netem: 1 ms on the way to the server"
        else
            filter=(--filter=delay -t 64)
            delays=(delay-read=1ms delay-write=1ms)
            delay_note="no sch_netem here: nbdkit delay filter, 1 ms per request"
        fi
        ip netns exec "$ns" nbdkit -f -i "$peer" -p 10809 "${filter[@]}" memory "size=$size" \
            "${delays[@]}" >"$work/nbdkit.log" 2>&1 &
        pids+=($!)
        uri="nbd://$peer:10809/"
        for _ in $(seq 100); do
            (exec 3<>"/dev/tcp/$peer/10809") 2>/dev/null && break
            sleep 0.05
        done
        ;;
    esac
    cat >"$work/leaf.toml" <<TOML
version = 1
[device]
name = "bench-leaf"
top = "n"
queues = 1
queue_depth = 32
[layers.n]
type = "nbd"
uri = "$uri"
TOML
}

# rate_leaf PATTERN: IOPS (4K) or MB/s (1M) of the stack, driven by `bench`.
rate_leaf() {
    local args
    case $1 in
    randread) args=(--pattern randread --bs 4KiB --qd 32) ;;
    seqread) args=(--pattern seqread --bs 1MiB --qd 8) ;;
    esac
    "$bin" bench "$work/leaf.toml" "${args[@]}" --queues 1 --seconds "$secs" --prefill \
        >"$work/bench.out" 2>&1 || { cat "$work/bench.out" >&2; exit 1; }
    awk -v p="$1" '$1 == "stack" { print (p == "seqread" ? $4 : $2); exit }' "$work/bench.out"
}

# rate_fio PATTERN: the same, from fio's nbd engine on the same server.
rate_fio() {
    local args
    case $1 in
    randread) args=(--rw=randread --bs=4k --iodepth=32) ;;
    seqread) args=(--rw=read --bs=1M --iodepth=8) ;;
    esac
    fio --name=b --ioengine=nbd --uri="$uri" "${args[@]}" --size="${size_mib}M" \
        --time_based --runtime="$secs" --ramp_time=0.5 --output-format=json \
        >"$work/fio.json" 2>"$work/fio.err" || { cat "$work/fio.err" >&2; exit 1; }
    python3 -c '
import json, sys
text = sys.stdin.read()
read = json.loads(text[text.index("{"):])["jobs"][0]["read"]
print(round(read["bw_bytes"] / 1e6, 1) if sys.argv[1] == "seqread" else round(read["iops"]))' "$1" <"$work/fio.json"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

printf '%-6s %-22s %12s %12s %7s  %s\n' link pattern leaf fio ratio rounds
for link in $links; do
    serve "$link"
    for pattern in randread seqread; do
        leaf=() theirs=() ratios=()
        for _ in $(seq "$rounds"); do
            a=$(rate_leaf "$pattern")
            b=$(rate_fio "$pattern")
            leaf+=("$a") theirs+=("$b")
            ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')")
        done
        label=$([[ $pattern == randread ]] && echo "4K randread QD32 IOPS" || echo "1M seqread QD8 MB/s")
        printf '%-6s %-22s %12s %12s %7s  %s\n' "$link" "$label" \
            "$(printf '%s\n' "${leaf[@]}" | median)" "$(printf '%s\n' "${theirs[@]}" | median)" \
            "$(printf '%s\n' "${ratios[@]}" | median)" "${ratios[*]}"
    done
    [[ -z $delay_note ]] || echo "       ($link: $delay_note)"
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
done
