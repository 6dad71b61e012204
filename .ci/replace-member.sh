#!/usr/bin/env bash
# docs/operations.md, "Replacing a member that lost or damaged its storage", followed step by
# step against a 3-member dengine-kv cluster on loopback: a member's data directory is wiped,
# its restart with the unchanged command is refused with the way to replace it, then it is
# replaced (remove, wipe, member add under a new id, start with --initial-cluster-state
# existing) and serves every acknowledged write. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
etcdctl_setup replace
cluster3
start3
for i in $(seq 30); do etcdctl --endpoints="$ENDPOINTS" put "k$i" "v$i" >/dev/null; done
echo "ok   30 writes acknowledged"

# Host 3 loses its disk, and is restarted with the unchanged command.
kill -KILL "${PIDS[3]}"; wait "${PIDS[3]}" 2>/dev/null || true; unset 'PIDS[3]'
rm -rf "$DIR/host-3"
: >"$DIR/host-3.log"
serve 3 3 --initial-members "$MEMBERS"
status=0; wait "${PIDS[3]}" || status=$?; unset 'PIDS[3]'
expect "the wiped member refuses to start" "1" "$([ "$status" -ne 0 ] && echo 1 || echo 0)"
grep -q "lost its data" "$DIR/host-3.log" || { cat "$DIR/host-3.log"; exit 1; }
grep -q "Replacing a member" "$DIR/host-3.log"
echo "ok   ... saying it lost its data and how to replace it"

# Step 1: remove the lost member, through the leader.
wait_leader
expect "member remove" "Member 3 removed from cluster 1" \
    "$(etcdctl --endpoints="$LEADER" member remove 3 | tr -s ' ')"
# Step 2: wipe its data directory.
rm -rf "$DIR/host-3"
# Step 3: add it again under a new id (etcdctl prints ids in hex).
added=$(etcdctl --endpoints="$LEADER" member add kv3b --peer-urls="http://127.0.0.1:${P[2]}")
NEW=$((16#$(tr -s ' ' <<<"$added" | sed -n 's/^Member \([0-9a-f]*\) added.*/\1/p')))
expect "the new member gets an id never used" "4" "$NEW"
# Step 4: start it joining, with the new id.
serve "$NEW" 3 --initial-cluster-state existing --initial-members "1=127.0.0.1:${P[0]},$NEW=127.0.0.1:${P[2]}"
NEW_EP="127.0.0.1:${C[2]}"
for _ in $(seq 150); do
    if [ "$(etcdctl --endpoints="$NEW_EP" get k30 --print-value-only --consistency=s 2>/dev/null)" = "v30" ]; then break; fi
    sleep 0.2
done
for i in $(seq 30); do
    got=$(etcdctl --endpoints="$NEW_EP" get "k$i" --print-value-only --consistency=s)
    [ "$got" = "v$i" ] || { echo "FAIL k$i on the new member: $got" >&2; exit 1; }
done
echo "ok   the replacement serves every acknowledged write"
expect "write through the new member" "OK" "$(etcdctl --endpoints="$NEW_EP" put after replaced)"
expect "membership" "3" "$(etcdctl --endpoints="$ENDPOINTS" member list | wc -l | tr -d ' ')"
echo "replace-member checks passed"
