#!/usr/bin/env bash
# Builds, the first time, a static rublk (libublk-rs's reference server,
# `cargo install rublk --no-default-features`) into benches/vm/.peers and prints
# its path. Its sys crate runs bindgen, which needs libclang.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
peers=$here/.peers
target=x86_64-unknown-linux-gnu
rublk=$peers/bin/rublk
if [[ ! -x $rublk ]]; then
    if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
        apt-get install -y -q libclang-dev >&2
    fi
    RUSTFLAGS='-C target-feature=+crt-static' cargo install rublk --locked \
        --no-default-features --root "$peers" --target "$target" \
        --target-dir "$peers/target" >&2
fi
echo "$rublk"
