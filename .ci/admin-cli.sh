#!/usr/bin/env bash
# `dengine-kv admin` (dengine's admin API from the command line) against a 3-member cluster on
# loopback: the status table of every member, then add-learner, a fourth member joining,
# promote, transfer-leader, snapshot and remove, each checked in the table or the cluster;
# refusals must read as sentences. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
etcdctl_setup admin-cli
cluster3
A=($(port) $(port) $(port) $(port))   # admin listeners (loopback: no token needed)
C[3]=$(port); P[3]=$(port)            # the fourth member's client and peer ports
for h in 1 2 3; do serve "$h" "$h" --initial-members "$MEMBERS" --listen-admin "127.0.0.1:${A[$((h-1))]}"; done
wait_leader
ADMIN="127.0.0.1:${A[0]},127.0.0.1:${A[1]},127.0.0.1:${A[2]}"
admin() { "$BIN" admin --endpoints "$ADMIN" "$@"; }
for i in $(seq 20); do etcdctl --endpoints="$ENDPOINTS" put "k$i" "v$i" >/dev/null; done

# column NAME TABLE: the values of one column of a status table, one per member row.
column() { awk -v name="$1" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next } { print $c }' <<<"$2"; }
# table_until WHAT AWK-CONDITION: polls `admin status` (up to 20 s) until some row matches.
table_until() {
    for _ in $(seq 100); do
        TABLE=$(admin status 2>/dev/null || true)
        if awk "NR > 1 && ($2) { found = 1 } END { exit !found }" <<<"$TABLE"; then
            echo "ok   $1"
            return
        fi
        sleep 0.2
    done
    printf 'FAIL %s\n%s\n' "$1" "$TABLE" >&2
    exit 1
}

TABLE=$(admin status)
echo "$TABLE"
expect "status: a row per member" "1 2 3" "$(column ID "$TABLE" | tr '\n' ' ' | sed 's/ $//')"
expect "status: one leader" "1" "$(column ROLE "$TABLE" | grep -c '^leader$')"
expect "status: one leader known to all" "1" "$(column LEADER "$TABLE" | sort -u | wc -l | tr -d ' ')"
LEADER_ID=$(awk 'NR > 1 && $3 == "leader" {print $2}' <<<"$TABLE")

# A refusal reads as a sentence naming the leader (a follower's admin address alone).
FOLLOWER_H=$(awk 'NR > 1 && $3 != "leader" {print $2; exit}' <<<"$TABLE")
out=$("$BIN" admin --endpoints "127.0.0.1:${A[$((FOLLOWER_H-1))]}" transfer-leader "$FOLLOWER_H" 2>&1 || true)
grep -q "the leader is node $LEADER_ID at 127.0.0.1:" <<<"$out" || { echo "FAIL refusal: $out" >&2; exit 1; }
! grep -q "Some(" <<<"$out" || { echo "FAIL refusal in Debug text: $out" >&2; exit 1; }
echo "ok   a follower's refusal names the leader: $out"

# Grow: a learner, the process joining, promotion.
expect "add-learner 4" "voters=[1, 2, 3] learners=[4]" "$(admin add-learner 4 "127.0.0.1:${P[3]}")"
serve 4 4 --initial-cluster-state existing --listen-admin "127.0.0.1:${A[3]}" \
    --initial-members "$LEADER_ID=127.0.0.1:${P[$((LEADER_ID-1))]},4=127.0.0.1:${P[3]}"
ADMIN="$ADMIN,127.0.0.1:${A[3]}"
table_until "the learner caught up (its lag as the leader sees it is 0)" '$2 == 4 && $8 == "0"'
expect "promote 4" "voters=[1, 2, 3, 4] learners=[]" "$(admin promote 4)"

# Leadership to the new member, a snapshot there, and the first member removed.
expect "transfer-leader 4" "member 4 leads" "$(admin transfer-leader 4)"
table_until "member 4 leads in the table" '$2 == 4 && $3 == "leader"'
snap=$(admin snapshot)
[[ "$snap" =~ ^snapshot\ at\ index\ ([0-9]+)\ term\ [0-9]+$ ]] && [ "${BASH_REMATCH[1]}" -ge 20 ] ||
    { echo "FAIL snapshot: $snap" >&2; exit 1; }
echo "ok   snapshot: $snap"
expect "remove 1" "voters=[2, 3, 4] learners=[]" "$(admin remove 1)"
for _ in $(seq 100); do kill -0 "${PIDS[1]}" 2>/dev/null || break; sleep 0.2; done
! kill -0 "${PIDS[1]}" 2>/dev/null || { echo "FAIL the removed member 1 still runs" >&2; exit 1; }
unset 'PIDS[1]'
echo "ok   the removed member stopped"
TABLE=$(admin status 2>/dev/null)
echo "$TABLE"
expect "status: the removed member is unreachable" "unreachable" "$(awk 'NR == 2 {print $3}' <<<"$TABLE")"
expect "every write is still there" "v20" \
    "$(etcdctl --endpoints="127.0.0.1:${C[1]},127.0.0.1:${C[2]},127.0.0.1:${C[3]}" get k20 --print-value-only)"
echo "admin-cli checks passed"
