#!/usr/bin/env bash
# Real etcdctl (Debian's etcd-client, v3 API) against a 3-member dengine-kv cluster on
# loopback: put, get --prefix, del, txn (interactive input on stdin), watch, get --rev and
# watch --rev (MVCC history), compaction, member list,
# endpoint status (also --cluster and http:// endpoints), move-leader, member add/update/promote/remove through a follower, check datascale,
# endpoint hashkv, defrag, snapshot save and a restore from it, the space quota and alarms, and
# leases (grant, put --lease, timetolive, list, keep-alive, revoke, expiry), lock and elect. Every
# output is asserted. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
etcdctl_setup etcdctl
cluster3
start3

ctl() { etcdctl --endpoints="$ENDPOINTS" --command-timeout=5s "$@"; }
# contains NAME WANT TEXT: TEXT holds WANT.
contains() {
    if ! grep -qF "$2" <<<"$3"; then
        printf 'FAIL %s: expected %s in\n%s\n' "$1" "$2" "$3" >&2
        exit 1
    fi
    echo "ok   $1"
}
# refused_with NAME SUBSTRING CMD...: CMD fails, saying SUBSTRING.
refused_with() {
    local name=$1 want=$2 out rc=0
    shift 2
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" = 0 ] || ! grep -qF "$want" <<<"$out"; then
        printf 'FAIL %s: expected a refusal containing %s, got (exit %s)\n%s\n' "$name" "$want" "$rc" "$out" >&2
        exit 1
    fi
    echo "ok   $name"
}


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

# MVCC history: get --rev reads a past revision, watch --rev replays the history from one, and
# a compaction frees what is before it (reads there get etcd's error), as in etcd.
REV1=$(ctl put hist one -w json | sed -E 's/.*"revision":([0-9]+).*/\1/')
ctl put hist two >/dev/null
expect "del (history)" "1" "$(ctl del hist)"
expect "get --rev (a past value)" "one" "$(ctl get hist --rev="$REV1" --print-value-only)"
expect "get --rev (the next one)" "two" "$(ctl get hist --rev=$((REV1 + 1)) --print-value-only)"
expect "get (deleted now)" "" "$(ctl get hist --print-value-only)"
out=$( (timeout 3 etcdctl --endpoints="$ENDPOINTS" watch hist --rev="$REV1" 2>/dev/null || true) | head -8)
expect "watch --rev (the history replayed)" "$(printf 'PUT\nhist\none\nPUT\nhist\ntwo\nDELETE\nhist')" "$out"
expect "compaction" "compacted revision $((REV1 + 1))" "$(ctl compaction $((REV1 + 1)))"
refused_with "get --rev before the compaction" "required revision has been compacted" ctl get hist --rev="$REV1"
expect "get --rev at the compaction" "two" "$(ctl get hist --rev=$((REV1 + 1)) --print-value-only)"

# member list: three started members with their peer and client URLs.
members=$(ctl member list | sort)
for i in 1 2 3; do
    if ! grep -q "node-$i, http://127.0.0.1:${P[$((i-1))]}, http://127.0.0.1:${C[$((i-1))]}" <<<"$members"; then
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
# http:// endpoints and --cluster (which dials the http:// URLs member list advertises):
# etcdctl 3.4 sends the endpoint, scheme included, as the HTTP/2 :authority; accepted, as etcd
# accepts it.
status=$(etcdctl --endpoints="http://${ENDPOINTS%%,*}" endpoint status --cluster)
expect "endpoint status --cluster (http:// URLs)" "3" "$(wc -l <<<"$status" | tr -d ' ')"
contains "endpoint status --cluster lists the advertised URLs" "http://127.0.0.1:${C[1]}," "$status"
expect "get with http:// endpoints" "other" \
    "$(etcdctl --endpoints="http://${ENDPOINTS//,/,http://}" get greeting --print-value-only)"

# expect_local_value NAME ENDPOINT KEY WANT: the member at ENDPOINT's own (serializable) value
# of KEY becomes WANT within 20 s.
expect_local_value() {
    local name=$1 ep=$2 key=$3 want=$4
    for _ in $(seq 100); do
        [ "$(etcdctl --endpoints="$ep" get "$key" --print-value-only --consistency=s 2>/dev/null)" = "$want" ] && break
        sleep 0.2
    done
    expect "$name" "$want" "$(etcdctl --endpoints="$ep" get "$key" --print-value-only --consistency=s)"
}

# move-leader: etcdctl finds the leader and asks it to hand over to a follower.
leader_id() { ctl endpoint status | awk -F', ' '$5 == "true" {print $2}'; }
FROM=$(leader_id)
TO=$(ctl endpoint status | awk -F', ' '$5 == "false" {print $2}' | head -1)
expect "move-leader" "Leadership transferred from $FROM to $TO" "$(ctl move-leader "$TO")"
for _ in $(seq 50); do [ "$(leader_id)" = "$TO" ] && break; sleep 0.1; done
expect "the new leader" "$TO" "$(leader_id)"

# Membership calls through a follower: passed on to the leader, as etcd does. member promote: a
# learner that never started is far behind the leader's log: refused as etcd refuses it; a
# voter is no learner.
FOLLOWER_EP=$(ctl endpoint status | awk -F', ' '$5 == "false" {print $1}' | head -1)
lctl() { etcdctl --endpoints="$FOLLOWER_EP" --command-timeout=5s "$@"; }
LEARNER=$(lctl member add spare --learner --peer-urls=http://127.0.0.1:9 | awk '/^Member/ {print $2}')
expect "member list (unstarted learner)" "$LEARNER, unstarted, , http://127.0.0.1:9, , true" \
    "$(ctl member list | grep "http://127.0.0.1:9," | sed 's/^ *//')"
out=$(lctl member update "$LEARNER" --peer-urls=http://127.0.0.1:10 | tr -s ' ' | sed 's/ in cluster .*//')
expect "member update" "Member $LEARNER updated" "$out"
expect "member list (updated peer URL)" "$LEARNER, unstarted, , http://127.0.0.1:10, , true" \
    "$(ctl member list | grep "http://127.0.0.1:10," | sed 's/^ *//')"
refused_with "member promote (behind)" \
    "etcdserver: can only promote a learner member which is in sync with leader" \
    lctl member promote "$LEARNER"
refused_with "member promote (a voter)" "etcdserver: can only promote a learner member" \
    lctl member promote "$TO"
expect "member remove" "Member $LEARNER removed" \
    "$(lctl member remove "$LEARNER" | tr -s ' ' | sed 's/ from cluster .*//')"
# ... and a learner that runs and catches up is promoted to a voter.
C[3]=$(port); P[3]=$(port)
added=$(lctl member add kv4 --learner --peer-urls="http://127.0.0.1:${P[3]}")
NEW=$((16#$(tr -s ' ' <<<"$added" | sed -n 's/^Member \([0-9a-f]*\) added.*/\1/p')))
serve "$NEW" 4 --name kv4 --initial-cluster-state existing --initial-members "$FROM=127.0.0.1:${P[$((FROM-1))]},$NEW=127.0.0.1:${P[3]}"
for _ in $(seq 100); do
    out=$(lctl member promote "$NEW" 2>&1) && break
    sleep 0.2
done
# Once started, the member is listed under the --name it was started with (as etcd lists it).
contains "member list (the started member's --name)" "$(printf '%x' "$NEW"), started, kv4, http://127.0.0.1:${P[3]}" \
    "$(lctl member list | sed 's/^ *//')"
expect "member promote" "Member $NEW promoted in cluster" "$(tr -s ' ' <<<"$out" | sed 's/ 1$//')"
expect "four voters" "false false false false" \
    "$(lctl member list -w json | python3 -c 'import json,sys; print(" ".join(str(m.get("isLearner", False)).lower() for m in json.load(sys.stdin)["members"]))')"
# ... and moved to another peer port: stopped, updated (three of four voters commit it), restarted
# there; it catches up with a write made meanwhile.
kill -TERM "${PIDS[4]}"; wait "${PIDS[4]}" 2>/dev/null || true
P[3]=$(port)
out=$(lctl member update "$NEW" --peer-urls="http://127.0.0.1:${P[3]}" | tr -s ' ' | sed 's/ in cluster .*//')
expect "member update (a voter that moved)" "Member $NEW updated" "$out"
lctl put moved yes >/dev/null
serve "$NEW" 4 --initial-cluster-state existing --initial-members "$FROM=127.0.0.1:${P[$((FROM-1))]},$NEW=127.0.0.1:${P[3]}"
expect_local_value "the moved member caught up" "127.0.0.1:${C[3]}" moved yes
expect "member remove (the promoted one)" "Member $NEW removed" \
    "$(lctl member remove "$NEW" | tr -s ' ' | sed 's/ from cluster .*//')"
# A removed member stops (as etcd's does) and says why; it serves nothing more.
for _ in $(seq 150); do kill -0 "${PIDS[4]}" 2>/dev/null || break; sleep 0.1; done
if kill -0 "${PIDS[4]}" 2>/dev/null; then
    echo "FAIL the removed member still runs 15 s after its removal" >&2
    exit 1
fi
echo "ok   the removed member stopped"
contains "the removed member says why" "removed from the cluster" "$(tail -5 "$DIR/host-4.log")"

# check datascale: 10,000 puts of 1 KiB, measuring the member's memory from /metrics on its
# client port (process_resident_memory_bytes, served over HTTP/1.1 next to gRPC, as etcd does).
out=$(ctl check datascale --load=s 2>&1 | tail -1)
if ! grep -q "^PASS: Approximate system memory used" <<<"$out"; then
    echo "FAIL check datascale: $out" >&2
    exit 1
fi
echo "ok   check datascale ($out)"

# endpoint hashkv: every member's key space hashes alike once all are at the same revision.
for _ in $(seq 50); do
    hashes=$(ctl endpoint hashkv | awk -F', ' '{print $2}' | sort -u)
    [ "$(wc -l <<<"$hashes" | tr -d ' ')" = 1 ] && break
    sleep 0.1
done
expect "endpoint hashkv (one hash for three members)" "3" "$(ctl endpoint hashkv | awk -F', ' -v h="$hashes" '$2 == h' | wc -l | tr -d ' ')"

# defrag: each member takes a snapshot of its state and compacts its log behind it (dengine-kv's
# disk holds the log and the snapshots, not a database file to rewrite).
out=$(ctl defrag)
for h in 1 2 3; do
    contains "defrag" "Finished defragmenting etcd member[127.0.0.1:${C[$((h-1))]}]" "$out"
    if ! ls "$DIR/host-$h/snapshots/"snapshot-*.dsnap >/dev/null 2>&1; then
        echo "FAIL defrag: no snapshot file in $DIR/host-$h/snapshots" >&2
        ls -R "$DIR/host-$h" >&2
        exit 1
    fi
done
echo "ok   defrag (a snapshot on every member)"

# snapshot save + restore: a backup of member 1 (whose state is the one all three hashed alike
# above) founds a new single-member cluster with the same key space; a learner added to it gets
# that state too; a damaged copy is refused before anything is written.
out=$(etcdctl --endpoints="127.0.0.1:${C[0]}" snapshot save "$DIR/backup.db")
contains "snapshot save" "Snapshot saved at $DIR/backup.db" "$out"
cp "$DIR/backup.db" "$DIR/damaged.db"
printf 'x' | dd of="$DIR/damaged.db" bs=1 seek=40 conv=notrunc 2>/dev/null
C[5]=$(port); P[5]=$(port); C[6]=$(port); P[6]=$(port)
refused_with "restore from a damaged backup" "is not an intact dengine backup" \
    "$BIN" serve --id 1 --data-dir "$DIR/host-damaged" --listen-client "127.0.0.1:${C[5]}" \
    --listen-peer "127.0.0.1:${P[5]}" --initial-members "1=127.0.0.1:${P[5]}" \
    --restore-from "$DIR/damaged.db"
expect "nothing written for a damaged backup" "" "$(ls -A "$DIR/host-damaged" 2>/dev/null)"
serve 1 6 --initial-members "1=127.0.0.1:${P[5]}" --restore-from "$DIR/backup.db"
rctl() { etcdctl --endpoints="127.0.0.1:${C[5]}" --command-timeout=5s "$@"; }
for _ in $(seq 100); do rctl endpoint status >/dev/null 2>&1 && break; sleep 0.1; done
expect "restored key" "other" "$(rctl get greeting --print-value-only)"
expect "restored key space (same hash)" "$hashes" "$(rctl endpoint hashkv | awk -F', ' '{print $2}')"
expect "a write to the restored cluster" "OK" "$(rctl put restored yes)"
added=$(rctl member add kv7 --learner --peer-urls="http://127.0.0.1:${P[6]}")
LEARNER7=$((16#$(tr -s ' ' <<<"$added" | sed -n 's/^Member \([0-9a-f]*\) added.*/\1/p')))
serve "$LEARNER7" 7 --initial-cluster-state existing --initial-members "1=127.0.0.1:${P[5]},$LEARNER7=127.0.0.1:${P[6]}"
expect_local_value "a learner of the restored cluster has its state" "127.0.0.1:${C[6]}" greeting other

# The space quota (etcd's --quota-backend-bytes) on a member of its own with a 20 kB quota: a
# put past it raises the NOSPACE alarm; while it is raised writes are refused; etcd's way out
# lifts it: delete keys, compact their history away, defrag, `alarm disarm`.
C[4]=$(port); P[4]=$(port)
serve 1 5 --initial-members "1=127.0.0.1:${P[4]}" --quota-backend-bytes 20000
sctl() { etcdctl --endpoints="127.0.0.1:${C[4]}" --command-timeout=5s "$@"; }
for _ in $(seq 100); do sctl endpoint status >/dev/null 2>&1 && break; sleep 0.1; done
KB=$(head -c 1000 /dev/zero | tr '\0' x)
for i in $(seq 40); do sctl put "big$i" "$KB" >/dev/null 2>&1 || break; done
refused_with "put past the quota" "etcdserver: mvcc: database space exceeded" sctl put small 1
contains "alarm list" "memberID:1 alarm:NOSPACE" "$(sctl alarm list)"
sctl del --prefix big >/dev/null
refused_with "put with the alarm raised" "etcdserver: mvcc: database space exceeded" sctl put small 1
REV=$(sctl get small -w json | sed -E 's/.*"revision":([0-9]+).*/\1/')
expect "compaction (frees the deleted keys' history)" "compacted revision $REV" "$(sctl compaction "$REV")"
contains "defrag" "Finished defragmenting" "$(sctl defrag)"
contains "alarm disarm" "memberID:1 alarm:NOSPACE" "$(sctl alarm disarm)"
expect "alarm list (none left)" "" "$(sctl alarm list)"
expect "put after the disarm" "OK" "$(sctl put small 1)"

# Leases: grant, put --lease, timetolive --keys, list, keep-alive (also through a follower),
# revoke (the keys go), and expiry when nobody keeps a lease alive.
lease_id() { sed -n 's/^lease \([0-9a-f]*\) granted with TTL(.*)$/\1/p'; }
LEASE=$(ctl lease grant 60 | lease_id)
[ -n "$LEASE" ] || { echo "FAIL lease grant: no lease id"; exit 1; }
echo "ok   lease grant ($LEASE)"
expect "put --lease" "OK" "$(ctl put --lease="$LEASE" svc/a up)"
contains "lease timetolive --keys" "lease $LEASE granted with TTL(60s), remaining(" "$(ctl lease timetolive --keys "$LEASE")"
contains "lease timetolive --keys (the key)" "attached keys([svc/a])" "$(ctl lease timetolive --keys "$LEASE")"
contains "lease list" "$LEASE" "$(ctl lease list)"
expect "lease keep-alive --once" "lease $LEASE keepalived with TTL(60)" "$(ctl lease keep-alive --once "$LEASE")"
expect "lease keep-alive --once through a follower" "lease $LEASE keepalived with TTL(60)" \
    "$(etcdctl --endpoints="$FOLLOWER_EP" lease keep-alive --once "$LEASE")"
contains "get -w json shows the lease" "\"lease\":$((16#$LEASE))" "$(ctl get svc/a -w json)"
expect "lease revoke" "lease $LEASE revoked" "$(ctl lease revoke "$LEASE")"
expect "a revoked lease's key is gone" "" "$(ctl get svc/a)"
expect "lease timetolive of a revoked lease" "lease $LEASE already expired" "$(ctl lease timetolive "$LEASE")"
refused_with "put --lease with an unknown lease" "requested lease not found" ctl put --lease="$LEASE" svc/b x
SHORT=$(ctl lease grant 2 | lease_id)
ctl put --lease="$SHORT" svc/short x >/dev/null
expect "a key of a 2 s lease, just put" "x" "$(ctl get svc/short --print-value-only)"
for _ in $(seq 100); do [ -z "$(ctl get svc/short)" ] && break; sleep 0.1; done
expect "a key of an expired lease is deleted" "" "$(ctl get svc/short)"
expect "lease timetolive of an expired lease" "lease $SHORT already expired" "$(ctl lease timetolive "$SHORT")"
# A background keep-alive holds a 2 s lease for 5 s.
KEPT=$(ctl lease grant 2 | lease_id)
ctl put --lease="$KEPT" svc/kept x >/dev/null
# (etcdctl itself in the background, not through `ctl`: its pid is then etcdctl's.)
etcdctl --endpoints="$ENDPOINTS" lease keep-alive "$KEPT" >/dev/null 2>&1 &
PIDS[keepalive]=$!
sleep 5
expect "a key kept alive by lease keep-alive stays" "x" "$(ctl get svc/kept --print-value-only)"
kill "${PIDS[keepalive]}"; wait "${PIDS[keepalive]}" 2>/dev/null || true
unset 'PIDS[keepalive]'

# Locks and elections (etcdctl runs etcd's recipes on a session lease, kept alive while it runs).
expect "lock NAME CMD (runs CMD holding the lock)" "held" "$(ctl lock job echo held)"
etcdctl --endpoints="$ENDPOINTS" lock job sleep 3 >/dev/null &
PIDS[holder]=$!
sleep 1
START=$(date +%s%N)
expect "a second lock waits for the holder" "second" "$(ctl lock job echo second)"
WAITED=$(( ($(date +%s%N) - START) / 1000000 ))
[ "$WAITED" -ge 1000 ] || { echo "FAIL the second lock did not wait (${WAITED} ms)"; exit 1; }
echo "ok   it waited ${WAITED} ms"
wait "${PIDS[holder]}" || true; unset 'PIDS[holder]'
# `elect -l` listens: it prints the leader's key and proposal, then every change, until stopped.
listen() { timeout 2 etcdctl --endpoints="$ENDPOINTS" elect -l pick 2>/dev/null || true; }
# campaign CHECK PROPOSAL: `elect` in the background until it leads with PROPOSAL (checked
# with `elect -l`), then it resigns (SIGINT).
campaign() {
    etcdctl --endpoints="$ENDPOINTS" elect pick "$2" >/dev/null 2>&1 &
    PIDS[campaign]=$!
    for _ in $(seq 20); do listen | grep -q "$2" && break; done
    contains "$1" "$2" "$(listen)"
    kill -INT "${PIDS[campaign]}"; wait "${PIDS[campaign]}" 2>/dev/null || true
    unset 'PIDS[campaign]'
}
campaign "elect -l (the leader's proposal)" alpha
campaign "the next campaigner leads once the first resigned" beta
echo "etcdctl checks passed"
