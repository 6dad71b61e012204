#!/usr/bin/env bash
# Real etcdctl (Debian's etcd-client, v3 API) against a 3-member dengine-kv cluster on
# loopback, with authentication: user add root, auth enable, role add, grant-permission
# --prefix, user add / grant-role, requests with --user, and the refusals (no user, wrong
# password, no permission, root's protections) on every member's endpoint alone, followers
# included (their writes are forwarded to the leader). Every output is asserted. Everything
# started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
etcdctl_setup etcdctl-auth
cluster3
start3

ctl() { etcdctl --endpoints="$ENDPOINTS" --command-timeout=5s "$@"; }
root() { ctl --user root:rootpw "$@"; }

ctl put app/a 1 >/dev/null
ctl put other x >/dev/null

# Enabling: root first. etcdctl answers "root user does not have root role" itself by adding
# the role root and granting it, as against etcd.
expect "auth enable needs root" "Error: etcdserver: root user does not exist" \
    "$(ctl auth enable 2>&1 | tail -n 1 || true)"
expect "user add root" "User root created" "$(ctl user add root:rootpw)"
expect "auth enable" "Authentication Enabled" "$(ctl auth enable 2>/dev/null)"

expect "role add" "Role reader created" "$(root role add reader)"
expect "grant-permission --prefix" "Role reader updated" \
    "$(root role grant-permission reader --prefix=true read app/)"
expect "grant-permission readwrite" "Role reader updated" \
    "$(root role grant-permission reader readwrite own)"
expect "user add" "User alice created" "$(root user add alice:alicepw)"
expect "user grant-role" "Role reader is granted to user alice" \
    "$(root user grant-role alice reader)"
expect "user get" "$(printf 'User: alice\nRoles: reader')" "$(root user get alice)"
expect "role get" "$(printf 'Role reader\nKV Read:\n\t[app/, app0) (prefix app/)\n\town\nKV Write:\n\town')" \
    "$(root role get reader)"
expect "user list" "$(printf 'alice\nroot')" "$(root user list)"
expect "role list" "$(printf 'reader\nroot')" "$(root role list)"

# Every member alone: the leader and both followers.
for i in 1 2 3; do
    ep="127.0.0.1:${C[$((i-1))]}"
    one() { etcdctl --endpoints="$ep" --command-timeout=5s "$@"; }
    alice() { one --user alice:alicepw "$@"; }
    role=$(one endpoint status | awk -F', ' '{print ($5 == "true") ? "leader" : "follower"}')
    echo "-- member $i ($role) at $ep"
    expect "member $i: get as alice" "1" "$(alice get app/a --print-value-only)"
    expect "member $i: get --prefix as alice" "$(printf 'app/a\n1')" "$(alice get --prefix app/)"
    expect "member $i: put as alice (forwarded by a follower)" "OK" "$(alice put own "by-$i")"
    expect "member $i: read back" "by-$i" "$(alice get own --print-value-only)"
    refused "member $i: put without permission" "Error: etcdserver: permission denied" \
        alice put app/a 2
    refused "member $i: get without permission" "Error: etcdserver: permission denied" \
        alice get other
    refused "member $i: range wider than the prefix" "Error: etcdserver: permission denied" \
        alice get --prefix app
    # (compares, success requests, failure requests, each ended by a blank line): the
    # failure branch writes where alice may not, so the whole transaction is refused.
    printf 'value("app/a") = "1"\n\nput own t\n\nput other t\n\n' |
        refused "member $i: txn touching another key" "Error: etcdserver: permission denied" \
            alice txn --interactive=false
    refused "member $i: no user" "Error: etcdserver: user name is empty" one get app/a
    refused "member $i: wrong password" \
        "Error: etcdserver: authentication failed, invalid user ID or password" \
        one --user alice:wrong get app/a
    refused "member $i: management as alice" "Error: etcdserver: permission denied" \
        alice user list
    expect "member $i: status without a user" "1" "$(one endpoint status | wc -l | tr -d ' ')"
done
expect "the leader's value is the last write" "by-3" "$(root get own --print-value-only)"

# A watch is checked when it is created.
out=$(timeout 10 etcdctl --endpoints="$ENDPOINTS" --user alice:alicepw watch other 2>&1 || true)
expect "watch without permission" \
    "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)" \
    "$(head -n 1 <<<"$out")"

# Root's protections and powers.
refused "auth disable as alice" "Error: etcdserver: permission denied" \
    ctl --user alice:alicepw auth disable
refused "delete root" "Error: etcdserver: invalid auth management" root user delete root
refused "revoke root from root" "Error: etcdserver: invalid auth management" \
    root user revoke-role root root
refused "compaction as alice" "Error: etcdserver: permission denied" \
    ctl --user alice:alicepw compaction 1
expect "compaction as root" "compacted revision 1" "$(root compaction 1)"

# A revoked permission is refused on every member.
expect "revoke-permission" \
    "Permission of range [app/, app0) is revoked from role reader" \
    "$(root role revoke-permission reader app/ --prefix=true)"
for i in 1 2 3; do
    refused "member $i: get after the revocation" "Error: etcdserver: permission denied" \
        etcdctl --endpoints="127.0.0.1:${C[$((i-1))]}" --user alice:alicepw get app/a
done

# A changed password: the old one is refused, the new one works.
expect "user passwd" "Password updated" \
    "$(root user passwd alice --interactive=false <<<"newpw")"
refused "old password" "Error: etcdserver: authentication failed, invalid user ID or password" \
    ctl --user alice:alicepw get own
expect "new password" "by-3" "$(ctl --user alice:newpw get own --print-value-only)"

# Auth off: anyone, on every member.
expect "auth disable" "Authentication Disabled" "$(root auth disable)"
for i in 1 2 3; do
    ep="127.0.0.1:${C[$((i-1))]}"
    expect "member $i: put without a user" "OK" "$(etcdctl --endpoints="$ep" put free "$i")"
done
expect "get without a user" "3" "$(ctl get free --print-value-only)"

status=$(ctl endpoint status)
expect "exactly one leader" "1" "$(grep -c ', true,' <<<"$status")"
echo "$status"
echo "etcdctl auth checks passed"
