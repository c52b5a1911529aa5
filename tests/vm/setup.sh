#!/usr/bin/env bash
# Install what the VM tests need and fetch the guest kernel into tests/vm/cache/.
#
#   bash tests/vm/setup.sh            # as root on Debian 12 (bookworm)
#
# Idempotent: when the tools are present and the kernel is already extracted it
# only checks and exits (well under a second). Environment:
#   KERNEL_PKG   exact kernel package to use, e.g. linux-image-6.12.117+deb12-cloud-amd64
#                (default: whatever linux-image-6.12-cloud-amd64 points at today)
#   VM_CACHE     cache dir (default tests/vm/cache next to this script)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${VM_CACHE:-$here/cache}
# The meta-package always points at the newest 6.12 cloud kernel that the archive
# (bookworm-security / bookworm-backports) still carries; older ABI packages get dropped.
meta_pkg=linux-image-6.12-cloud-amd64
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

# --- guest kernel -------------------------------------------------------------
# Layout: cache/kernel/{vmlinuz,modules/*.ko,VERSION}. The stamp file is written
# last, so an interrupted run is redone rather than half-used.
kdir=$cache/kernel
if [[ -f $kdir/.done ]]; then
    exit 0
fi

pkg=${KERNEL_PKG:-}
if [[ -z $pkg ]]; then
    apt-cache show "$meta_pkg" >/dev/null 2>&1 || apt_update
    pkg=$(apt-cache depends "$meta_pkg" | awk '/Depends: linux-image-6\.12\./ {print $2; exit}')
    [[ -n $pkg ]] || {
        log "cannot resolve $meta_pkg to a kernel package; is bookworm-security or bookworm-backports in the apt sources?"
        exit 1
    }
fi
apt-cache show "$pkg" >/dev/null 2>&1 || apt_update

rm -rf "$kdir" "$cache/dl"
mkdir -p "$cache/dl" "$kdir/modules"
log "downloading $pkg"
# Sandbox user root: _apt cannot write into a root-owned work tree.
(cd "$cache/dl" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
deb=$(ls "$cache"/dl/*.deb)
dpkg -x "$deb" "$cache/dl/root"

release=${pkg#linux-image-}
release=${release%-unsigned}
cp "$cache/dl/root/boot/vmlinuz-$release" "$kdir/vmlinuz"
for m in "${modules[@]}"; do
    ko=$(find "$cache/dl/root/lib/modules/$release" -name "$m.ko*" | head -n1)
    [[ -n $ko ]] || { log "module $m not found in $pkg"; exit 1; }
    case $ko in
    *.xz) xz -dc "$ko" >"$kdir/modules/$m.ko" ;;
    *) cp "$ko" "$kdir/modules/$m.ko" ;;
    esac
    # The guest has no modprobe/modules.dep: refuse to continue if a module
    # depends on one we do not load before it.
    for dep in $(modinfo -F depends "$kdir/modules/$m.ko" | tr ',' ' '); do
        [[ -f $kdir/modules/$dep.ko ]] || {
            log "$m depends on $dep, which is not in the module list before it"
            exit 1
        }
    done
done
printf '%s\n' "${modules[@]}" >"$kdir/modules/ORDER"
{
    echo "package=$pkg"
    echo "version=$(dpkg-deb -f "$deb" Version)"
    echo "release=$release"
} >"$kdir/VERSION"
rm -rf "$cache/dl"
touch "$kdir/.done"
log "kernel ready: $(tr '\n' ' ' <"$kdir/VERSION")"
