#!/usr/bin/env bash
# Adding a plugin is one folder plus one line (issue 15), checked end to end: copy the workspace's
# sources to a temporary directory, copy plugins/loraplus to plugins/loraplus-copy there (new
# package and registered name), add ONE line to crates/balora-plugins/Cargo.toml, and check that
# the conformance suite finds `optimizer:loraplus-copy` by name and passes it on ndarray (plus
# wgpu when BALORA_ADD_PLUGIN_WGPU=1, as in CI with a Vulkan driver). Nothing else is edited:
# the root Cargo.toml's `plugins/*` glob makes the folder a member, balora-plugins' build script
# links it.
#
# Builds into the main target directory by default (the copies of unchanged crates reuse its
# dependencies); set CARGO_TARGET_DIR to isolate it. Usage: tests/add_plugin.sh
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d "${TMPDIR:-/tmp}/balora-add-plugin.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

# The sources as they are in the working tree (tracked and new files that exist, no data assets),
# mtimes kept: the copies of unchanged crates then match what the target directory holds.
(cd "$root" && git ls-files -co --exclude-standard -z | grep -zv '^assets/' |
    while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
    xargs -0 cp -p --parents -t "$work")

# 1. The folder.
cp -rp "$work/plugins/loraplus" "$work/plugins/loraplus-copy"
sed -i 's/^name = "balora-plugin-loraplus"/name = "balora-plugin-loraplus-copy"/' \
    "$work/plugins/loraplus-copy/Cargo.toml"
sed -i 's/"loraplus"/"loraplus-copy"/g' "$work/plugins/loraplus-copy/src/lib.rs"
rm -rf "$work/plugins/loraplus-copy/tests" # its tests name the original crate

# 2. The one line.
list="$work/crates/balora-plugins/Cargo.toml"
sed -i '/^balora-plugin-loraplus = /a balora-plugin-loraplus-copy = { path = "../../plugins/loraplus-copy" }' "$list"
[ "$(git -C "$root" diff --no-index --numstat "$root/crates/balora-plugins/Cargo.toml" "$list" | cut -f1,2)" = "$(printf '1\t0')" ] ||
    { echo "expected exactly one added line in the plugin list" >&2; exit 1; }

cd "$work"
features=()
backends=(ndarray)
if [ "${BALORA_ADD_PLUGIN_WGPU:-0}" = 1 ]; then
    features=(--features wgpu)
    backends+=(wgpu)
fi
cargo build --offline -q -p balora-conformance --bin balora-conformance "${features[@]}"
bin="$CARGO_TARGET_DIR/debug/balora-conformance"
"$bin" --list | grep -qx 'optimizer:loraplus-copy' ||
    { echo "optimizer:loraplus-copy is not among the conformance checks" >&2; "$bin" --list >&2; exit 1; }
for b in "${backends[@]}"; do
    out=$("$bin" --backend "$b" --filter 'optimizer:loraplus')
    echo "$out"
    echo "$out" | grep -q "^$b *optimizer:loraplus-copy *pass" ||
        { echo "optimizer:loraplus-copy did not pass on $b" >&2; exit 1; }
done
echo "add_plugin: a copied plugin plus one line is found by name and passes the conformance suite"
