# Guest side of `PROFILE=1 bash benches/vm/run.sh`: where the CPU goes while fio
# runs 4 KiB random reads at QD32 against ublk-stack (a `file` leaf on tmpfs, one
# queue) and then against /dev/loopN on the same file. perf samples every CPU
# (software clock: TCG has no PMU) for 5 s in the middle of each 12 s run and
# prints the split by thread and the hottest symbols.
. /vmtest/lib.sh
. /vmtest/scenarios/ublk.bash
set +o pipefail # `head` closes perf's pipe early

echo 0 >/proc/sys/kernel/kptr_restrict
echo -1 >/proc/sys/kernel/perf_event_paranoid
dd if=/dev/zero of=/work/backing.img bs=1M count=512 status=none
cat >/work/p.toml <<'TOML'
version = 1
[device]
name = "p"
top = "f"
queues = 1
[layers.f]
type = "file"
path = "backing.img"
TOML

# profile LABEL DEVICE
profile() {
    local label=$1 dev=$2
    fio --name=r --filename="$dev" --ioengine=io_uring --direct=1 --rw=randread \
        --bs=4k --iodepth=32 --time_based --runtime=12 --output-format=terse \
        >"/work/$label.fio" &
    local fio_pid=$!
    sleep 3
    perf record -a -g -F 499 -o "/work/$label.data" -- sleep 5 >/dev/null 2>&1
    wait "$fio_pid"
    echo "PROFILE $label iops=$(awk -F';' '{print $8}' "/work/$label.fio")"
    echo "PROFILE $label: share of all samples by thread and object"
    perf report -i "/work/$label.data" --stdio --no-children --sort comm,dso -g none \
        2>/dev/null | grep '%' | head -12 | sed "s/^/PROFILE $label /"
    echo "PROFILE $label: hottest symbols"
    perf report -i "/work/$label.data" --stdio --no-children --sort comm,sym -g none \
        2>/dev/null | grep '%' | head -30 | sed "s/^/PROFILE $label /"
    if [[ $label == ublk ]]; then
        echo "PROFILE $label: the daemon's own code (share of all samples)"
        perf report -i "/work/$label.data" --stdio --no-children --dsos ublk-stack \
            --sort sym -g none 2>/dev/null | grep '%' | head -25 | sed "s/^/PROFILE $label /"
    fi
}

up_device /work/p.toml
profile ublk "$DEV"
down_device p
loop=$(losetup -f --show /work/backing.img)
profile loop "$loop"
losetup -d "$loop"
step ok
