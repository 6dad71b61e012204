#!/usr/bin/env bash
# A 3-member dengine-kv cluster started with etcd's own flags only, as etcd's clustering guide
# starts one (static bootstrap: --name, --initial-advertise-peer-urls, --listen-peer-urls,
# --listen-client-urls, --advertise-client-urls, --initial-cluster-token, --initial-cluster,
# --initial-cluster-state new); then etcdctl writes and reads, `member list` shows the
# advertised client URLs, and a member whose advertised peer URL is not its own entry in
# --initial-cluster is refused with the reason. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
etcdctl_setup etcd-flags
cluster3
CLUSTER="infra1=http://127.0.0.1:${P[0]},infra2=http://127.0.0.1:${P[1]},infra3=http://127.0.0.1:${P[2]}"

# etcd_member N [flags...]: member infraN with etcd's flags, data in $DIR/infraN (exec: run it
# in the background, and $! is its pid).
etcd_member() {
    local n=$1
    shift
    exec "$BIN" serve --name "infra$n" --data-dir "$DIR/infra$n" \
        --initial-advertise-peer-urls "http://127.0.0.1:${P[$((n-1))]}" \
        --listen-peer-urls "http://127.0.0.1:${P[$((n-1))]}" \
        --listen-client-urls "http://127.0.0.1:${C[$((n-1))]}" \
        --advertise-client-urls "http://127.0.0.1:${C[$((n-1))]}" \
        --initial-cluster-token etcd-cluster-1 \
        --initial-cluster "$CLUSTER" \
        --initial-cluster-state new "$@" >>"$DIR/infra$n.log" 2>&1
}

for n in 1 2 3; do etcd_member "$n" & PIDS[$n]=$!; done
wait_leader
expect "put through the etcd-flag cluster" "OK" "$(etcdctl --endpoints="$ENDPOINTS" put greeting hello)"
expect "get from every member" "hello hello hello" "$(for c in "${C[@]}"; do
    etcdctl --endpoints="127.0.0.1:$c" get greeting --print-value-only --consistency=l; done | tr '\n' ' ' | sed 's/ $//')"
members=$(etcdctl --endpoints="$ENDPOINTS" member list)
echo "$members"
for c in "${C[@]}"; do
    grep -q "http://127.0.0.1:$c" <<<"$members" || { echo "FAIL member list lacks http://127.0.0.1:$c" >&2; exit 1; }
done
echo "ok   member list shows every advertised client URL"
expect "member ids by position in --initial-cluster" "1 2 3" \
    "$(etcdctl --endpoints="$ENDPOINTS" endpoint status -w json | python3 -c '
import json, sys
print(" ".join(str(s["Status"]["header"]["member_id"]) for s in json.load(sys.stdin)))')"

# A fourth process whose advertised peer URL is not its entry in --initial-cluster is refused.
rc=0
out=$("$BIN" serve --name infra2 --data-dir "$DIR/wrong" --listen-client-urls "http://127.0.0.1:$(port)" \
    --listen-peer-urls "http://127.0.0.1:$(port)" --initial-cluster "$CLUSTER" 2>&1) || rc=$?
[ "$rc" -ne 0 ] && grep -q "node.initial_members.2" <<<"$out" && grep -q "node.listen_addr" <<<"$out" ||
    { echo "FAIL a mismatched peer URL was not refused (rc $rc): $out" >&2; exit 1; }
echo "ok   a member whose peer URL is not its --initial-cluster entry is refused: $(tail -n 1 <<<"$out")"
echo "etcd-flags checks passed"
