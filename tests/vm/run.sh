#!/usr/bin/env bash
# Boot a test kernel once per scenario and report each scenario's result.
#
#   tests/vm/run.sh BINARY SCENARIO.sh [SCENARIO.sh...]
#
#   BINARY     a statically linked ublk-stack, installed in the guest as
#              /bin/ublk-stack; "-" for none (scenarios that only test the VM).
#   SCENARIO   a bash script run as root in the guest, cwd a fresh tmpfs (/work).
#              Exit 0 = pass. Its name (basename without .sh) is the marker name.
#
# Each scenario gets its own boot (about 3 s), so a wedged device or a kernel
# oops in one scenario cannot fail the next one.
#
# Environment (all optional):
#   VM_KERNEL            which kernel setup.sh fetched to boot: 6.12 or 7.3 (6.12)
#   VM_TIMEOUT           host-side limit per boot in seconds, qemu is killed after it (400)
#   VM_SCENARIO_TIMEOUT  guest-side limit for the scenario script (300)
#   VM_MEM, VM_SMP       guest memory and cpus (2G, 2)
#   VM_CPU               qemu -cpu model (max)
#   VM_LOG_DIR           where the serial logs go (a new temp dir); one NAME.SERIES.log
#                        per scenario and kernel, so both kernels can share a dir
#   VM_VERBOSE=1         also stream the serial console to stderr while it runs
#   VM_CACHE             kernel cache made by setup.sh (tests/vm/cache)
#   VM_GUEST_ENV         "NAME=VALUE ..." exported to the scenarios (seeds, sizes);
#                        values cannot hold spaces
#   VM_EXTRA_BINS        "PATH ..." more static executables (peers compared in
#                        benches/vm), installed in the guest's /bin by their names
#   VM_EXTRA_TOOLS       "NAME ..." more host tools copied with their libraries
#                        (perf, for benches/vm/profile.sh)
#   VM_KEEP_SYMBOLS=1    do not strip the ublk-stack binary (for profiles)
#   VM_QEMU_ARGS         "ARG ..." more qemu arguments (a -drive for benches/vm);
#                        arguments cannot hold spaces
#
# Exit status: 0 when every scenario printed "VMTEST NAME PASS" (read from the
# guest's second serial port, which nothing else writes to); 1 when any failed,
# printed no marker, timed out or the kernel reported a BUG/Oops/panic; 2 on usage
# or setup errors. On failure the tail of that scenario's log goes to stderr. A
# boot whose kernel oopses before it runs /init is tried again (three boots at
# most), and says so on stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VM_CACHE:-$here/cache}
series=${VM_KERNEL:-6.12}
kdir=$cache/kernels/$series
vm_timeout=${VM_TIMEOUT:-400}
scenario_timeout=${VM_SCENARIO_TIMEOUT:-300}
mem=${VM_MEM:-2G}
smp=${VM_SMP:-2}
cpu=${VM_CPU:-max}

die() { echo "run.sh: $*" >&2; exit 2; }

(($# >= 2)) || die "usage: $0 BINARY|- SCENARIO.sh [SCENARIO.sh...]"
binary=$1
shift
[[ $binary == - || -x $binary ]] || die "binary $binary is not an executable file"
[[ $series == 6.12 || $series == 7.3 ]] || die "VM_KERNEL=$series: the kernels are 6.12 and 7.3"
[[ -f $kdir/.done ]] || die "no $series kernel in $kdir; run: bash tests/vm/setup.sh"
release=$(sed -n 's/^release=//p' "$kdir/VERSION")
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing; run: bash tests/vm/setup.sh"
for s in "$@"; do
    [[ -f $s && $s == *.sh ]] || die "scenario $s is not a .sh file"
done

log_dir=${VM_LOG_DIR:-$(mktemp -d /tmp/ublk-stack-vm.XXXXXX)}
mkdir -p "$log_dir"
work=$(mktemp -d /tmp/ublk-stack-initramfs.XXXXXX)
trap '[[ -n ${VM_KEEP:-} ]] || rm -rf "$work"' EXIT
root=$work/root
build_started=$(date +%s.%N)

# --- initramfs ------------------------------------------------------------------
# Real tools go where the host has them (/usr/bin, /usr/sbin on merged-usr Debian);
# busybox fills in every other applet name. PATH in the guest puts /usr first.
tools=(bash fio mke2fs mkfs.ext4 e2fsck resize2fs tune2fs dumpe2fs debugfs losetup blockdev
    cmp sha256sum md5sum dd timeout stat truncate sync od head tail sort uniq
    cut tr wc seq sleep date env nproc lsblk)
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib64,lib/modules,proc,sys,dev,tmp,run,work,root,etc,vmtest/scenarios}

libs=()
copy_elf() { # $1 = source path; copies it to the same path and records its libraries
    local src=$1 dst=$root$1
    mkdir -p "$(dirname "$dst")"
    cp -L "$src" "$dst"
    # ldd prints "name => /path (addr)" or "/lib64/ld-linux... (addr)"; static
    # binaries make it fail, hence || true.
    while read -r lib; do libs+=("$lib"); done < <(ldd "$src" 2>/dev/null |
        awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}
read -ra extra_tools <<<"${VM_EXTRA_TOOLS:-}"
tools+=("${extra_tools[@]}")
for t in "${tools[@]}"; do
    p=$(command -v "$t") || die "host tool $t missing; run: bash tests/vm/setup.sh"
    copy_elf "$p"
done
# Libraries at the path ldd resolved them to, which is on the loader's default
# search path, so the guest needs no ld.so.cache.
for lib in $(printf '%s\n' "${libs[@]}" | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
ln -sf /usr/bin/bash "$root/bin/bash"
cp /etc/mke2fs.conf "$root/etc/" 2>/dev/null || true
echo "root:x:0:0:root:/root:/bin/bash" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

cp /bin/busybox "$root/bin/busybox"
ldd "$root/bin/busybox" >/dev/null 2>&1 && die "/bin/busybox is not static; run: bash tests/vm/setup.sh"
# The other applet links are made by init at boot (busybox --install skips names
# that exist, so the real tools above stay); one process there is much cheaper
# than ~270 ln calls here.
ln -s busybox "$root/bin/sh"

cp "$kdir"/modules/*.ko "$kdir/modules/ORDER" "$root/lib/modules/"
cp "$here/guest/init" "$root/init"
chmod 755 "$root/init"
cp -r "$here/guest/." "$root/vmtest/"
rm -f "$root/vmtest/init"
if [[ $binary != - ]]; then
    cp "$binary" "$root/bin/ublk-stack"
    # Debug info is not needed in the guest and would only grow the initramfs.
    [[ ${VM_KEEP_SYMBOLS:-} == 1 ]] || strip "$root/bin/ublk-stack" 2>/dev/null || true
fi
read -ra extra_bins <<<"${VM_EXTRA_BINS:-}"
for extra in "${extra_bins[@]}"; do
    [[ -x $extra ]] || die "VM_EXTRA_BINS: $extra is not an executable file"
    ! ldd "$extra" 2>/dev/null | grep -q "=>" || die "VM_EXTRA_BINS: $extra is not static"
    cp "$extra" "$root/bin/$(basename "$extra")"
    strip "$root/bin/$(basename "$extra")" 2>/dev/null || true
done
# Everything next to the scenarios (helpers, fixtures) and the example configs.
[[ -d $here/scenarios ]] && cp -r "$here/scenarios/." "$root/vmtest/scenarios/"
[[ -d $repo/configs ]] && cp -r "$repo/configs" "$root/configs"
# The guest does not inherit the host's environment; init sources this file.
read -ra guest_env <<<"${VM_GUEST_ENV:-}"
for pair in "${guest_env[@]}"; do
    [[ $pair =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "VM_GUEST_ENV: '$pair' is not NAME=VALUE"
    value=${pair#*=}
    printf "export %s='%s'\n" "${pair%%=*}" "${value//\'/\'\\\'\'}"
done >"$root/vmtest/env"
names=()
for s in "$@"; do
    name=$(basename "$s" .sh)
    cp "$s" "$root/vmtest/scenarios/$name.sh"
    names+=("$name")
done

# Uncompressed cpio: the kernel unpacks it faster than it could gunzip.
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) >"$work/initramfs.cpio"
echo "run.sh: initramfs $(($(stat -c %s "$work/initramfs.cpio") >> 20)) MiB built in" \
    "$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $build_started}")s" >&2

# --- boot, once per scenario ------------------------------------------------------------
failed=0
for name in "${names[@]}"; do
    log=$log_dir/$name.$series.log
    result=$work/$name.result
    : >"$result"
    started=$(date +%s.%N)
    # -no-reboot turns the reboot after a panic (panic=-1) into a qemu exit;
    # timeout kills qemu if the guest hangs without panicking.
    # shellcheck disable=SC2054 # the commas belong to qemu options
    cmd=(timeout -k 5 "$vm_timeout" qemu-system-x86_64
        -accel tcg,thread=multi -cpu "$cpu" -smp "$smp" -m "$mem"
        -nographic -no-reboot -nic none
        -serial mon:stdio -serial "file:$result"
        -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.cpio"
        -append "console=ttyS0 panic=-1 rdinit=/init vmtest.scenario=$name vmtest.timeout=$scenario_timeout")
    read -ra qemu_extra <<<"${VM_QEMU_ARGS:-}"
    cmd+=("${qemu_extra[@]}")
    # A kernel that oopses before it runs /init never reached anything of
    # ours: under TCG, 7.3 (and rarely 6.12) sometimes trips over its own
    # boot-time code patching (an int3 Oops in the scheduler). Such a boot is
    # tried again, up to three boots; any failure after /init started counts.
    for attempt in 1 2 3; do
        : >"$result"
        rc=0
        if [[ ${VM_VERBOSE:-} == 1 ]]; then
            "${cmd[@]}" </dev/null 2>&1 | tee "$log" >&2 || rc=$?
        else
            "${cmd[@]}" </dev/null >"$log" 2>&1 || rc=$?
        fi
        if ((attempt < 3)) && ! grep -q 'Run /init as init process' "$log" &&
            grep -qE '(^|\] )(BUG:|Oops:|Kernel panic)' "$log"; then
            mv "$log" "$log.boot$attempt"
            echo "run.sh: $name on $release: the kernel failed before it started /init" \
                "(boot $attempt, log $log.boot$attempt); booting again" >&2
            continue
        fi
        break
    done
    elapsed=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $started}")
    clean=$(tr -d '\r' <"$log")
    marker=$(tr -d '\r' <"$result")
    reason=
    if ((rc == 124 || rc == 137)); then
        reason="timed out after ${vm_timeout}s"
    elif grep -qE '(^|\] )(BUG:|Oops:|Kernel panic)' <<<"$clean"; then
        reason="kernel BUG/Oops/panic"
    elif [[ $marker == "VMTEST $name PASS" ]]; then
        reason=
    elif [[ $marker == "VMTEST $name FAIL "* ]]; then
        reason="scenario ${marker#"VMTEST $name FAIL "}"
    else
        reason="no result marker (qemu exit $rc)"
    fi
    # Measurements printed by scenarios (bench_randread) are the caller's result.
    grep -E '^(BENCH|PROFILE) ' <<<"$clean" || true
    if [[ -z $reason ]]; then
        echo "run.sh: $name on $release PASS (${elapsed}s, log $log)"
    else
        failed=1
        echo "run.sh: $name on $release FAIL: $reason (${elapsed}s, log $log); last lines:" >&2
        tail -n 60 <<<"$clean" | sed 's/^/  | /' >&2
    fi
done
exit $failed
