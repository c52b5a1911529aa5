#!/usr/bin/env bash
# Checks that README.md's install command works: runs it, as the README writes
# it, into a scratch root instead of ~/.cargo, and runs the binary it
# installed. `cargo install --path` builds in the workspace's target folder, so
# after packaging/deb.sh's release build it only copies the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

command=$(grep -oE '^cargo install [^#]*--path \.' README.md | head -n 1 | sed 's/ *$//')
[[ -n $command ]] || { echo "check-install: README.md has no 'cargo install ... --path .' line" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "check-install: $command --root $scratch"
$command --root "$scratch"
"$scratch/bin/ublk-stack" --version | grep -q '^ublk-stack ' ||
    { echo "check-install: the installed binary does not run" >&2; exit 1; }
echo "check-install: ok ($("$scratch/bin/ublk-stack" --version))"
