#!/usr/bin/env bash
# The README's "Quick start: embed dengine", as a user outside this workspace would follow it:
# the crates are packaged (`cargo package`, what crates.io would receive), unpacked, and a
# scratch project depends on them (`[patch.crates-io]` stands in for the registry, since they
# are not published); its src/main.rs and node.toml are the README's blocks, copied verbatim.
# It must build, print `register = x=1`, and do so again on a restart from the same data
# directory. Nothing is left running; the scratch directory is removed unless a step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
TARGET=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)
scratch quickstart

# The published crates, packaged as they would be uploaded.
CRATES=(dengine dengine-core dengine-node dengine-net-grpc dengine-storage-common
    dengine-storage-redb dengine-storage-sled dengine-storage-wal)
cargo package --no-verify --allow-dirty --quiet $(printf -- '-p %s ' "${CRATES[@]}")
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
mkdir "$DIR/packages"
for c in "${CRATES[@]}"; do
    tar -xzf "$TARGET/package/$c-$VERSION.crate" -C "$DIR/packages"
done

# The scratch project: what `cargo new` + the README's `cargo add` lines give.
APP="$DIR/hello-raft"
mkdir -p "$APP/src"
{
    echo '[package]'
    echo 'name = "hello-raft"'
    echo 'version = "0.1.0"'
    echo 'edition = "2024"'
    echo
    echo '[dependencies]'
    echo "dengine = \"$VERSION\""
    echo 'bytes = "1"'
    echo 'tokio = { version = "1", features = ["macros", "rt-multi-thread"] }'
    echo
    echo '[patch.crates-io]'
    for c in "${CRATES[@]}"; do echo "$c = { path = \"$DIR/packages/$c-$VERSION\" }"; done
} >"$APP/Cargo.toml"
# The workspace's lock file keeps the dependencies at the versions CI tests (cargo drops the
# entries the scratch project does not use), and the shared target directory reuses their builds.
cp Cargo.lock "$APP/"

# block LANG: the first ```LANG block after the quick start heading in README.md.
block() {
    awk -v lang="$1" '
        /^## Quick start: embed dengine/ { inside = 1 }
        inside && !found && $0 ~ "^```" lang "($|,)" { found = 1; copying = 1; next }
        copying && /^```/ { exit }
        copying { print }
    ' README.md
}
block rust >"$APP/src/main.rs"
block toml >"$APP/node.toml"
[ -s "$APP/src/main.rs" ] && [ -s "$APP/node.toml" ] || { echo "README quick start blocks not found"; exit 1; }
echo "ok   scratch project from the README: $(wc -l <"$APP/src/main.rs") lines of main.rs, $(wc -l <"$APP/node.toml") of node.toml"

cd "$APP"
CARGO_TARGET_DIR="$TARGET" cargo build --quiet
EXE="$TARGET/debug/hello-raft"
for run in first restart; do
    out=$(timeout 60 "$EXE" 2>&1) || { echo "$out"; echo "the quick start failed on its $run run"; exit 1; }
    grep -qx 'register = x=1' <<<"$out" || { echo "$out"; echo "the $run run did not print 'register = x=1'"; exit 1; }
    echo "ok   $run run: register = x=1"
done
[ -d "$APP/data-1" ] || { echo "no data directory data-1/ after the runs"; exit 1; }
echo "ok   the README quick start builds and runs outside the workspace, from the packaged crates"
