#!/usr/bin/env bash
# Checks a package built by packaging/deb.sh (the newest in target/debian/, or
# the path given): unpacked into a scratch folder, it holds the binary, which
# runs and names its version, the systemd template unit, the bash, zsh and fish
# completions, the man page, the example configs and the copyright file; the
# maintainer scripts parse; lintian, when installed, reports (its tags do not
# fail the check). Then, unless a ublk-stack is installed already, the package
# is installed for real with `dpkg -i`, checked again (/usr/bin/ublk-stack runs,
# /etc/ublk-stack exists) and purged, which leaves no file behind.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=${1:-$(ls -t target/debian/ublk-stack_*.deb 2>/dev/null | head -n 1)}
[[ -f $deb ]] || { echo "check-deb: no package; run packaging/deb.sh first" >&2; exit 1; }
fail() { echo "check-deb: $deb: $*" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

version=$(dpkg-deb --field "$deb" Version)
[[ $(dpkg-deb --field "$deb" Package) == ublk-stack ]] || fail "the package is not named ublk-stack"
dpkg-deb -x "$deb" "$scratch/root"
dpkg-deb -e "$deb" "$scratch/control"
root=$scratch/root
for path in \
    usr/bin/ublk-stack \
    usr/lib/systemd/system/ublk-stack@.service \
    usr/share/bash-completion/completions/ublk-stack \
    usr/share/zsh/vendor-completions/_ublk-stack \
    usr/share/fish/vendor_completions.d/ublk-stack.fish \
    usr/share/man/man1/ublk-stack.1.gz \
    usr/share/doc/ublk-stack/examples/mirror.toml \
    usr/share/doc/ublk-stack/copyright; do
    [[ -s $root/$path ]] || fail "$path is missing or empty"
done
[[ -x $root/usr/bin/ublk-stack ]] || fail "usr/bin/ublk-stack is not executable"
"$root/usr/bin/ublk-stack" --version | grep -q "^ublk-stack ${version%-*} (commit " ||
    fail "usr/bin/ublk-stack --version does not name version ${version%-*}"
grep -q '^ExecStart=/usr/bin/ublk-stack up /etc/ublk-stack/%i.toml$' \
    "$root/usr/lib/systemd/system/ublk-stack@.service" || fail "the unit does not start /usr/bin/ublk-stack"
zcat "$root/usr/share/man/man1/ublk-stack.1.gz" | grep -q '^\.TH ublk-stack 1' || fail "the man page is not roff"
bash -n "$root/usr/share/bash-completion/completions/ublk-stack" || fail "the bash completion does not parse"
grep -q 'scrub' "$root/usr/share/zsh/vendor-completions/_ublk-stack" || fail "the zsh completion lacks scrub"
grep -q 'scrub' "$root/usr/share/fish/vendor_completions.d/ublk-stack.fish" || fail "the fish completion lacks scrub"
for script in postinst postrm; do
    sh -n "$scratch/control/$script" || fail "$script does not parse"
done
echo "check-deb: $deb: contents ok ($(dpkg-deb --field "$deb" Installed-Size) KiB installed)"

if command -v lintian >/dev/null; then
    lintian --tag-display-limit 0 "$deb" || echo "check-deb: lintian found the tags above (not fatal)"
else
    echo "check-deb: lintian is not installed; skipped (apt-get install lintian)"
fi

# A real install only where it cannot replace or remove anything of the
# machine's own: no ublk-stack package and no /usr/bin/ublk-stack.
if dpkg-query -W ublk-stack >/dev/null 2>&1 || [[ -e /usr/bin/ublk-stack ]]; then
    echo "check-deb: ublk-stack is installed on this machine already; no dpkg -i"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "check-deb: not root; no dpkg -i"
    exit 0
fi
dpkg -i "$deb"
trap 'dpkg --purge ublk-stack >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
/usr/bin/ublk-stack --version | grep -q "^ublk-stack ${version%-*} " || fail "installed: /usr/bin/ublk-stack does not run"
[[ -d /etc/ublk-stack ]] || fail "installed: /etc/ublk-stack is missing"
dpkg -L ublk-stack | grep -qx /usr/lib/systemd/system/ublk-stack@.service || fail "installed: the unit is not listed"
dpkg -r ublk-stack
[[ ! -e /usr/bin/ublk-stack ]] || fail "removed: /usr/bin/ublk-stack is still there"
dpkg --purge ublk-stack
[[ ! -e /etc/ublk-stack ]] || echo "check-deb: /etc/ublk-stack stays (it holds files)"
echo "check-deb: $deb: installed, ran and removed cleanly"
