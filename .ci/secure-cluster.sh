#!/usr/bin/env bash
# docs/operations.md, "Securing a cluster", step by step, on loopback: two CAs, member
# certificates naming member-<id>, client-listener and client certificates, an admin token,
# a settings file per member, three dengine-kv members with peer mutual TLS, client TLS and
# --client-cert-auth, etcd users and roles. Then what the section promises is checked:
# members elect over mutual TLS; clients need TLS and credentials; alice reads app/ on every
# member and cannot write; the peer port refuses alice's certificate and no certificate; the
# admin port refuses a request without the token. Everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
need etcdctl etcd-client
need openssl openssl
export ETCDCTL_API=3
kv_bin
scratch secure
cd "$DIR"
C=($(port) $(port) $(port))   # client ports
P=($(port) $(port) $(port))   # peer ports
A=($(port) $(port) $(port))   # admin ports (loopback)

# 1. Two certificate authorities.
mkdir -p pki && cd pki
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=kv member CA" -keyout member-ca.key -out member-ca.pem 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=kv client CA" -keyout client-ca.key -out client-ca.pem 2>/dev/null

# 2. A certificate per member, naming member-<id> (here every member is on 127.0.0.1).
for i in 1 2 3; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=member-$i" \
      -keyout member$i.key -out member$i.csr 2>/dev/null
  printf 'subjectAltName=DNS:member-%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' "$i" >member$i.ext
  openssl x509 -req -in member$i.csr -CA member-ca.pem -CAkey member-ca.key -CAcreateserial \
      -days 825 -extfile member$i.ext -out member$i.pem 2>/dev/null
done

# 3. Client-listener certificates and a client certificate for alice.
for i in 1 2 3; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kv$i" \
      -keyout client-server$i.key -out client-server$i.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >client-server$i.ext
  openssl x509 -req -in client-server$i.csr -CA client-ca.pem -CAkey client-ca.key \
      -CAcreateserial -days 825 -extfile client-server$i.ext -out client-server$i.pem 2>/dev/null
done
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=alice" \
    -keyout alice.key -out alice.csr 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' >alice.ext
openssl x509 -req -in alice.csr -CA client-ca.pem -CAkey client-ca.key -CAcreateserial \
    -days 825 -extfile alice.ext -out alice.pem 2>/dev/null

# 4. An admin token.
openssl rand -hex 32 >admin-token && chmod 600 admin-token
cd ..

# 5. A settings file per member.
for i in 1 2 3; do
  cat >member$i.toml <<EOF
[node]
id = $i
cluster_id = 42
listen_addr = "127.0.0.1:${P[$((i-1))]}"
client_addr = "127.0.0.1:${C[$((i-1))]}"
admin_addr = "127.0.0.1:${A[$((i-1))]}"
data_dir = "kv$i"

[node.initial_members]
1 = "127.0.0.1:${P[0]}"
2 = "127.0.0.1:${P[1]}"
3 = "127.0.0.1:${P[2]}"

[network.tls]
cert = "pki/member$i.pem"
key = "pki/member$i.key"
ca = "pki/member-ca.pem"
require_client_cert = true

[client_api.tls]
cert = "pki/client-server$i.pem"
key = "pki/client-server$i.key"
ca = "pki/client-ca.pem"
require_client_cert = false

[admin]
token_file = "pki/admin-token"
EOF
done

# 6. Start the members.
for i in 1 2 3; do
    "$BIN" serve --config member$i.toml --client-cert-auth >member$i.log 2>&1 &
    PIDS[$i]=$!
done

fails_with() { # fails_with NAME TEXT COMMAND...: the command fails and its output contains TEXT
    local out
    if out=$("${@:3}" 2>&1); then
        printf 'FAIL %s: succeeded\n%s\n' "$1" "$out" >&2
        exit 1
    fi
    if ! grep -qF -- "$2" <<<"$out"; then
        printf 'FAIL %s\n--- expected an error with ---\n%s\n--- got ---\n%s\n' "$1" "$2" "$out" >&2
        exit 1
    fi
    echo "ok   $1"
}

ENDPOINTS="127.0.0.1:${C[0]},127.0.0.1:${C[1]},127.0.0.1:${C[2]}"
E="--endpoints=$ENDPOINTS --cacert=pki/client-ca.pem --command-timeout=10s"
for _ in $(seq 150); do
    if etcdctl $E endpoint status 2>/dev/null | grep -q ", true,"; then break; fi
    sleep 0.2
done
expect "members elect a leader over mutual TLS" "1" \
    "$(etcdctl $E endpoint status 2>/dev/null | grep -c ', true,')"

# 7. Users, roles and permissions.
etcdctl $E user add root:ROOT-PASSWORD >/dev/null
etcdctl $E auth enable >/dev/null
R="--user root:ROOT-PASSWORD"
etcdctl $E $R role add app-reader >/dev/null
etcdctl $E $R role grant-permission app-reader --prefix=true read app/ >/dev/null
etcdctl $E $R user add alice --no-password >/dev/null
etcdctl $E $R user grant-role alice app-reader >/dev/null
expect "root writes" "OK" "$(etcdctl $E $R put app/config v1)"
# Through every member: followers forward to the leader over the peer listener's mutual TLS.
for i in 1 2 3; do
    one="--endpoints=127.0.0.1:${C[$((i-1))]} --cacert=pki/client-ca.pem --command-timeout=10s"
    expect "member $i: a write through it (forwarded over mTLS by followers)" "OK" \
        "$(etcdctl $one $R put app/via-$i yes)"
done
ALICE="--cert=pki/alice.pem --key=pki/alice.key"
for i in 1 2 3; do
    one="--endpoints=127.0.0.1:${C[$((i-1))]} --cacert=pki/client-ca.pem --command-timeout=10s"
    expect "member $i: alice reads app/ by certificate" "v1" \
        "$(etcdctl $one $ALICE get app/config --print-value-only)"
    fails_with "member $i: alice cannot write" "permission denied" etcdctl $one $ALICE put app/x 1
    fails_with "member $i: no credentials, no reads" "user name is empty" etcdctl $one get app/config
    fails_with "member $i: plaintext is refused" "" \
        etcdctl --endpoints=127.0.0.1:${C[$((i-1))]} --command-timeout=3s get app/config
done

# The peer port takes member certificates only: alice's (client CA) and none are refused.
peer_handshake() { # peer_handshake PORT [openssl s_client options...]
    # TLS 1.2: the client certificate is judged inside the handshake, so its outcome shows.
    timeout 10 openssl s_client -tls1_2 -connect "127.0.0.1:$1" -CAfile pki/member-ca.pem \
        -verify_return_error "${@:2}" </dev/null 2>&1 || true
}
out=$(peer_handshake "${P[0]}" -cert pki/alice.pem -key pki/alice.key)
if ! grep -qiE "alert (unknown ca|bad certificate|certificate unknown|decrypt error)" <<<"$out"; then
    echo "FAIL the peer port accepted alice's certificate:"; echo "$out"; exit 1
fi
echo "ok   the peer port refuses a client certificate ($(grep -oiE "alert [a-z ]+" <<<"$out" | head -1))"
out=$(peer_handshake "${P[0]}")
if ! grep -qiE "alert (certificate required|handshake failure)" <<<"$out"; then
    echo "FAIL the peer port accepted a connection without certificate:"; echo "$out"; exit 1
fi
echo "ok   the peer port refuses a connection without certificate ($(grep -oiE "alert [a-z ]+" <<<"$out" | head -1))"

# The admin port needs the token.
fails_with "admin without the token" "pass the members' admin token with --token-file" \
    "$BIN" admin --endpoints "127.0.0.1:${A[0]}" status
status=$("$BIN" admin --endpoints "127.0.0.1:${A[0]}" --token-file pki/admin-token status)
expect "admin with the token: member 1 answers" "1" "$(awk 'NR == 2 {print $2}' <<<"$status")"
echo "secure-cluster checks passed"
