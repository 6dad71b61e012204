#!/usr/bin/env bash
# `dengine-kv serve` with no arguments, as a newcomer would type it (in an empty directory,
# like `etcd` with no flags): it must start a single-member cluster on etcd's ports
# (127.0.0.1:2379 for clients, 2380 for peers) and answer `etcdctl put` and `get` within 2 s of
# being started, say what it did, and find its data in ./default.dengine again on a restart.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
etcdctl_setup zero-config
E=(etcdctl --endpoints=127.0.0.1:2379 --dial-timeout=1s --command-timeout=1s)

# start: runs `dengine-kv serve` (no arguments) in $DIR; T0 is when it was started.
start() {
    (cd "$DIR" && exec "$BIN" serve) >>"$DIR/serve.log" 2>&1 &
    PIDS[1]=$!
    T0=$(date +%s%N)
    # Until the client port accepts connections (etcdctl would otherwise back off for 1 s
    # after its first refused dial, and that would be measured too).
    until (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null; do
        [ $(( ($(date +%s%N) - T0) / 1000000 )) -gt 2000 ] && break
        sleep 0.02
    done
}
# within_2s NAME COMMAND...: retries COMMAND until it succeeds; fails unless that is within 2 s
# of the start.
within_2s() {
    local name=$1 ms
    shift
    until "$@" >"$DIR/out" 2>/dev/null; do
        if [ $(( ($(date +%s%N) - T0) / 1000000 )) -gt 2000 ]; then
            cat "$DIR/serve.log"
            echo "FAIL $name: no answer within 2 s of the start" >&2
            exit 1
        fi
        sleep 0.05
    done
    ms=$(( ($(date +%s%N) - T0) / 1000000 ))
    echo "ok   $name, $ms ms after the start"
}

start
within_2s "etcdctl put" "${E[@]}" put greeting hello
within_2s "etcdctl get" "${E[@]}" get greeting --print-value-only
expect "the value read back" hello "$(cat "$DIR/out")"
grep -q "single-member cluster" "$DIR/serve.log" || { cat "$DIR/serve.log"; echo "FAIL: it did not say what it did" >&2; exit 1; }
echo "ok   it said what it did: $(grep -m1 'single-member cluster' "$DIR/serve.log")"
[ -d "$DIR/default.dengine" ] || { echo "FAIL: no ./default.dengine" >&2; exit 1; }

kill -TERM "${PIDS[1]}"; wait "${PIDS[1]}" || true
start
within_2s "etcdctl get after a restart" "${E[@]}" get greeting --print-value-only
expect "the value after a restart" hello "$(cat "$DIR/out")"
