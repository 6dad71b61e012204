#!/usr/bin/env bash
# Real etcdctl (Debian's etcd-client, v3 API) against a 3-member dengine-kv cluster on
# loopback: put, get --prefix, del, txn (interactive input on stdin), watch, member list,
# endpoint status. Every output is asserted. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcdctl >/dev/null; then
    echo "etcdctl missing: installing Debian's etcd-client"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: etcdctl is not installed and this is not root; run: apt-get install -y etcd-client" >&2
        exit 1
    fi
    apt-get update -qq && apt-get install -y -qq etcd-client >/dev/null
fi
export ETCDCTL_API=3

cargo build --quiet -p dengine-kv --bin dengine-kv
BIN="${CARGO_TARGET_DIR:-target}/debug/dengine-kv"
DIR=$(mktemp -d /tmp/dengine-etcdctl.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'KEEP=1' ERR

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=($(port) $(port) $(port))       # client ports (the etcd API)
PP=($(port) $(port) $(port))      # peer ports
MEMBERS="1=127.0.0.1:${PP[0]},2=127.0.0.1:${PP[1]},3=127.0.0.1:${PP[2]}"
ENDPOINTS="127.0.0.1:${P[0]},127.0.0.1:${P[1]},127.0.0.1:${P[2]}"
for i in 1 2 3; do
    "$BIN" serve --id "$i" --listen-client "127.0.0.1:${P[$((i-1))]}" \
        --listen-peer "127.0.0.1:${PP[$((i-1))]}" --data-dir "$DIR/node-$i" \
        --initial-members "$MEMBERS" >"$DIR/node-$i.log" 2>&1 &
    PIDS+=($!)
done

ctl() { etcdctl --endpoints="$ENDPOINTS" --command-timeout=5s "$@"; }
expect() { # expect NAME EXPECTED ACTUAL
    if [ "$2" != "$3" ]; then
        printf 'FAIL %s\n--- expected ---\n%s\n--- got ---\n%s\n' "$1" "$2" "$3" >&2
        exit 1
    fi
    echo "ok   $1"
}

for _ in $(seq 100); do
    if ctl endpoint status 2>/dev/null | grep -q ", true,"; then break; fi
    sleep 0.2
done

expect "put" "OK" "$(ctl put greeting hello)"
ctl put app/a 1 >/dev/null
ctl put app/b 2 >/dev/null
ctl put apples 3 >/dev/null
expect "get" "$(printf 'greeting\nhello')" "$(ctl get greeting)"
expect "get --prefix" "$(printf 'app/a\n1\napp/b\n2')" "$(ctl get --prefix app/)"
expect "get --prefix --keys-only" "$(printf 'app/a\n\napp/b\n\napples')" "$(ctl get --prefix app --keys-only)"
# Reads through a follower's endpoint alone (serializable and linearizable).
FOLLOWER_EP=""
for ep in ${ENDPOINTS//,/ }; do
    if etcdctl --endpoints="$ep" endpoint status | grep -q ", false,"; then FOLLOWER_EP=$ep; break; fi
done
expect "follower read" "hello" "$(etcdctl --endpoints="$FOLLOWER_EP" get greeting --print-value-only)"
expect "follower write" "OK" "$(etcdctl --endpoints="$FOLLOWER_EP" put via-follower yes)"
expect "del" "1" "$(ctl del app/a)"
expect "del --prefix" "2" "$(ctl del --prefix ap)"

# txn, interactive: compares, success requests, failure requests, separated by blank lines
# (etcdctl prints its prompts on stdout; drop them).
txn() { ctl txn -i 2>/dev/null | grep -vE '^(compares|success requests|failure requests)'; }
out=$(printf 'value("greeting") = "hello"\n\nput greeting hi\n\nput greeting nope\n\n' | txn)
expect "txn success branch" "$(printf 'SUCCESS\n\nOK')" "$out"
expect "txn applied" "hi" "$(ctl get greeting --print-value-only)"
out=$(printf 'value("greeting") = "hello"\n\nput greeting hi2\n\nput greeting other\n\n' | txn)
expect "txn failure branch" "$(printf 'FAILURE\n\nOK')" "$out"
expect "txn failure applied" "other" "$(ctl get greeting --print-value-only)"

# watch in the background, bounded in time.
(timeout 10 etcdctl --endpoints="$ENDPOINTS" watch watched >"$DIR/watch.out" 2>&1 || true) &
WATCH=$!
sleep 1.5
ctl put watched one >/dev/null
ctl put watched two >/dev/null
for _ in $(seq 50); do
    if grep -q two "$DIR/watch.out"; then break; fi
    sleep 0.1
done
kill "$WATCH" 2>/dev/null || true
wait "$WATCH" 2>/dev/null || true
expect "watch" "$(printf 'PUT\nwatched\none\nPUT\nwatched\ntwo')" "$(head -6 "$DIR/watch.out")"

# member list: three started members with their peer and client URLs.
members=$(ctl member list | sort)
for i in 1 2 3; do
    if ! grep -q "node-$i, http://127.0.0.1:${PP[$((i-1))]}, http://127.0.0.1:${P[$((i-1))]}" <<<"$members"; then
        echo "FAIL member list: node-$i missing" >&2
        echo "$members" >&2
        exit 1
    fi
done
expect "member list count" "3" "$(wc -l <<<"$members" | tr -d ' ')"
echo "ok   member list"

# endpoint status: one leader among the three, same raft term everywhere.
status=$(ctl endpoint status)
expect "endpoint status rows" "3" "$(wc -l <<<"$status" | tr -d ' ')"
expect "exactly one leader" "1" "$(grep -c ', true,' <<<"$status")"
echo "$status"
echo "etcdctl checks passed"
