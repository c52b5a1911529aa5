#!/usr/bin/env bash
# Install what the VM tests need and fetch the guest kernels into tests/vm/cache/.
#
#   bash tests/vm/setup.sh            # as root on Debian 12 (bookworm)
#
# Two kernels, each in cache/kernels/SERIES/ (SERIES is the name run.sh's
# VM_KERNEL takes):
#   6.12  Debian 12's cloud kernel, linux-image-6.12.*+deb12-cloud-amd64, from the
#         host's apt sources (bookworm-security)
#   7.3   Debian 13's backported cloud kernel, linux-binary-7.3.4+deb13-cloud-amd64
#         (vmlinuz) and linux-modules-7.3.4+deb13-cloud-amd64 (the modules), from
#         trixie-backports through a private apt state in cache/apt/: nothing is
#         installed on the host and its apt sources stay as they are
#
# Idempotent: when the tools are present and both kernels are already extracted
# it only checks and exits (well under a second). A kernel that cannot be set up
# fails the script. Environment:
#   KERNEL_PKG   exact 6.12 package to use, e.g. linux-image-6.12.117+deb12-cloud-amd64
#                (default: whatever linux-image-6.12-cloud-amd64 points at today)
#   VM_CACHE     cache dir (default tests/vm/cache next to this script)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${VM_CACHE:-$here/cache}
# The meta-package always points at the newest 6.12 cloud kernel that the archive
# (bookworm-security / bookworm-backports) still carries; older ABI packages get dropped.
meta_pkg=linux-image-6.12-cloud-amd64
# 7.3 comes split in two packages (linux-image-* is only a meta package there).
pkgs_7_3=(linux-binary-7.3.4+deb13-cloud-amd64 linux-modules-7.3.4+deb13-cloud-amd64)
backports_source="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main"
# Modules the guest loads; no modules.dep ships with the extracted tree, so the
# run script insmods them in this order (dependencies are checked below).
modules=(loop ublk_drv virtio_blk)

log() { echo "setup.sh: $*" >&2; }
# --- host tools --------------------------------------------------------------
# command -> Debian package. Paths matter: run.sh copies these exact binaries.
declare -A need=(
    [qemu-system-x86_64]=qemu-system-x86
    [/bin/busybox]=busybox-static
    [fio]=fio
    [mkfs.ext4]=e2fsprogs
    [e2fsck]=e2fsprogs
    [resize2fs]=e2fsprogs
    [xz]=xz-utils
    [cpio]=cpio
    [bash]=bash
    [modinfo]=kmod
    [losetup]=util-linux
    [cmp]=diffutils
    [sha256sum]=coreutils
    [timeout]=coreutils
)
missing=()
for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# busybox (the dynamic one) may be present; the guest needs the static build.
if [[ -x /bin/busybox ]] && ldd /bin/busybox >/dev/null 2>&1; then
    missing+=(busybox-static)
fi

apt_updated=
apt_update() {
    [[ -n $apt_updated ]] && return 0
    log "apt-get update"
    apt-get update -qq
    apt_updated=1
}

if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing ${missing[*]}"
    apt_update
    # --no-install-recommends: qemu's recommends pull in a desktop's worth of packages.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- guest kernels ------------------------------------------------------------
# Layout: cache/kernels/SERIES/{vmlinuz,modules/*.ko,modules/ORDER,VERSION}. The
# stamp file is written last, so an interrupted run is redone rather than half-used.

# extract SERIES DEB...: unpack the packages and copy the kernel and the modules
# into cache/kernels/SERIES. The vmlinuz sits in /boot (6.12) or next to the
# modules in /usr/lib/modules/RELEASE (7.3).
extract() {
    local series=$1 kdir=$cache/kernels/$1 dl=$cache/dl-$1 release vmlinuz deb
    shift
    mkdir -p "$kdir/modules"
    for deb in "$@"; do dpkg -x "$deb" "$dl/root"; done
    vmlinuz=$(find "$dl/root/boot" "$dl/root/usr/lib/modules" -name 'vmlinuz*' 2>/dev/null | head -n1 || true)
    [[ -n $vmlinuz ]] || { log "$series: no vmlinuz in $*"; exit 1; }
    cp "$vmlinuz" "$kdir/vmlinuz"
    release=$(basename "$(find "$dl/root" -path '*/lib/modules/*' -maxdepth 4 -mindepth 3 -type d -name '*-amd64' | head -n1 || true)")
    [[ -n $release ]] || { log "$series: no module tree in $*"; exit 1; }
    for m in "${modules[@]}"; do
        ko=$(find "$dl/root" -path "*/lib/modules/$release/*" -name "$m.ko*" | head -n1)
        [[ -n $ko ]] || { log "$series: module $m not found in $*"; exit 1; }
        case $ko in
        *.xz) xz -dc "$ko" >"$kdir/modules/$m.ko" ;;
        *) cp "$ko" "$kdir/modules/$m.ko" ;;
        esac
        # The guest has no modprobe/modules.dep: refuse to continue if a module
        # depends on one we do not load before it.
        for dep in $(modinfo -F depends "$kdir/modules/$m.ko" | tr ',' ' '); do
            [[ -f $kdir/modules/$dep.ko ]] || {
                log "$series: $m depends on $dep, which is not in the module list before it"
                exit 1
            }
        done
    done
    printf '%s\n' "${modules[@]}" >"$kdir/modules/ORDER"
    {
        echo "series=$series"
        for deb in "$@"; do echo "package=$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"; done
        echo "release=$release"
    } >"$kdir/VERSION"
}

setup_6_12() {
    local pkg=${KERNEL_PKG:-} dl=$cache/dl-6.12
    if [[ -z $pkg ]]; then
        apt-cache show "$meta_pkg" >/dev/null 2>&1 || apt_update
        pkg=$(apt-cache depends "$meta_pkg" | awk '/Depends: linux-image-6\.12\./ {print $2; exit}')
        [[ -n $pkg ]] || {
            log "cannot resolve $meta_pkg to a kernel package; is bookworm-security or bookworm-backports in the apt sources?"
            exit 1
        }
    fi
    apt-cache show "$pkg" >/dev/null 2>&1 || apt_update
    log "6.12: downloading $pkg"
    # Sandbox user root: _apt cannot write into a root-owned work tree.
    (cd "$dl" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
    extract 6.12 "$dl"/*.deb
}

setup_7_3() {
    local dl=$cache/dl-7.3 apt_dir=$cache/apt
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
    echo "$backports_source" >"$apt_dir/sources.list"
    # A private apt state: only trixie-backports, its own lists and cache, no
    # installed packages, so the host's sources and dpkg database are untouched.
    local private=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir"
        -o Dir::State::Status=/dev/null -o APT::Sandbox::User=root)
    log "7.3: apt-get update (trixie-backports only, private state in $apt_dir)"
    apt-get "${private[@]}" update -qq || {
        log "7.3: apt-get update of trixie-backports failed (archive reachable? keyring has the trixie keys?)"
        exit 1
    }
    log "7.3: downloading ${pkgs_7_3[*]}"
    (cd "$dl" && apt-get "${private[@]}" download -qq "${pkgs_7_3[@]}")
    extract 7.3 "$dl"/*.deb
}

for series in 6.12 7.3; do
    kdir=$cache/kernels/$series
    [[ -f $kdir/.done ]] && continue
    rm -rf "$kdir" "$cache/dl-$series"
    mkdir -p "$cache/dl-$series"
    "setup_${series/./_}"
    rm -rf "$cache/dl-$series"
    touch "$kdir/.done"
    log "kernel $series ready: $(grep -v '^series=' "$kdir/VERSION" | tr '\n' ' ')"
done
