# Shared by the .ci/*.sh scripts (sourced, not run): installing what is missing, a scratch
# directory and the processes started in it (stopped on exit; the directory removed, or kept
# with its logs printed on failure), free ports, a 3-member dengine-kv cluster on loopback, and
# assertions.

# need COMMAND DEBIAN-PACKAGE: installs the package if the command is missing (root only).
need() {
    command -v "$1" >/dev/null && return
    echo "$1 missing: installing Debian's $2"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $1 is not installed and this is not root; run: apt-get install -y $2" >&2
        exit 1
    fi
    apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
}

# kv_bin: builds dengine-kv (debug) and sets BIN to its absolute path.
kv_bin() {
    cargo build --quiet -p dengine-kv --bin dengine-kv
    # CARGO_TARGET_DIR may be absolute or relative to here.
    BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/dengine-kv"
    if [ ! -x "$BIN" ]; then
        echo "dengine-kv was built but is not at $BIN" >&2
        exit 1
    fi
}

# etcdctl_setup NAME: what a script that drives dengine-kv with the real etcdctl needs: etcdctl
# (v3 API), the dengine-kv binary (BIN) and a scratch directory (see scratch).
etcdctl_setup() {
    need etcdctl etcd-client
    export ETCDCTL_API=3
    kv_bin
    scratch "$1"
}

# scratch NAME: a fresh directory DIR; every pid in PIDS (an associative array, so that a
# member's process can be replaced) is stopped on exit; DIR is removed when the script
# succeeds, else kept with the tail of every log in it printed (a failed check exits 1 and
# trips no ERR trap, so the exit status decides, not the trap alone).
scratch() {
    DIR=$(mktemp -d "/tmp/dengine-$1.XXXXXX")
    declare -gA PIDS=()
    trap _cleanup EXIT
    trap 'KEEP=1' ERR
}
_cleanup() {
    local status=$?
    # Only the script's own shell cleans up: a subshell that exits must not stop the members
    # or remove the directory under the script.
    [ "$BASHPID" = "$$" ] || return 0
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$status" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$DIR"
        return 0
    fi
    local log
    for log in $(find "$DIR" -name '*.log' -type f 2>/dev/null | sort); do
        echo "--- last 40 lines of $log ---" >&2
        tail -n 40 "$log" >&2
    done
    echo "exit status $status; files kept in $DIR" >&2
}

# port: a loopback port that was free a moment ago, never the same twice in one scratch
# directory. Picked below the kernel's ephemeral range (net.ipv4.ip_local_port_range), as
# `cargo xtask` picks its ports (xtask/src/cluster.rs, `free_port`): a port found by binding
# port 0 comes from that range, where outgoing connections (a peer's, etcdctl's) get their
# local ports too, so one could take it before the member binds it, and the member would not
# start (it happened to admin-cli.sh's member 1 on 2026-12-06).
port() {
    python3 - "${DIR:+$DIR/.ports}" <<'PY'
import random, socket, sys
given_file = sys.argv[1]
try:
    given = set(open(given_file).read().split()) if given_file else set()
except FileNotFoundError:
    given = set()
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return s.getsockname()[1]
    except OSError:
        return None
    finally:
        s.close()
port = None
for _ in range(500):
    if low <= 11000:
        break
    p = random.randint(10000, low - 1)
    if str(p) not in given and free(p):
        port = p
        break
if port is None:  # no room below the ephemeral range: any free port
    port = free(0)
if given_file:
    with open(given_file, "a") as f:
        f.write(f"{port}\n")
print(port)
PY
}

# cluster3: ports for three members (C: client, P: peer), MEMBERS (peer addresses) and
# ENDPOINTS (client addresses).
cluster3() {
    C=($(port) $(port) $(port))
    P=($(port) $(port) $(port))
    MEMBERS="1=127.0.0.1:${P[0]},2=127.0.0.1:${P[1]},3=127.0.0.1:${P[2]}"
    ENDPOINTS="127.0.0.1:${C[0]},127.0.0.1:${C[1]},127.0.0.1:${C[2]}"
}

# serve ID HOST [flags...]: member ID in the background on host HOST's ports (1..3), data in
# $DIR/host-HOST, log appended to $DIR/host-HOST.log.
serve() {
    local id=$1 host=$2
    shift 2
    "$BIN" serve --id "$id" --data-dir "$DIR/host-$host" \
        --listen-client "127.0.0.1:${C[$((host-1))]}" --listen-peer "127.0.0.1:${P[$((host-1))]}" \
        "$@" >>"$DIR/host-$host.log" 2>&1 &
    PIDS[$host]=$!
}

# start3: the three members of cluster3, bootstrapping, and waits until one leads.
start3() {
    for h in 1 2 3; do serve "$h" "$h" --initial-members "$MEMBERS"; done
    wait_leader
}

# wait_leader: waits (up to 30 s) until a member leads; sets LEADER to its client address.
wait_leader() {
    for _ in $(seq 150); do
        LEADER=$(leader)
        [ -n "$LEADER" ] && return
        sleep 0.2
    done
    echo "no leader after 30 s" >&2
    exit 1
}

# leader: the client address of the member that leads (members that are down are skipped).
leader() {
    # Short timeouts, so that wait_leader's 30 s bound holds while members are down.
    { etcdctl --endpoints="$ENDPOINTS" --dial-timeout=1s --command-timeout=2s endpoint status \
        2>/dev/null || true; } |
        awk -F', ' '$5 == "true" {print $1}' | head -1
}

# expect NAME EXPECTED ACTUAL
expect() {
    if [ "$2" != "$3" ]; then
        printf 'FAIL %s\n--- expected ---\n%s\n--- got ---\n%s\n' "$1" "$2" "$3" >&2
        exit 1
    fi
    echo "ok   $1"
}

# refused NAME EXPECTED-ERROR COMMAND...: the command fails and its last line of output (etcdctl
# logs its retries as JSON before it) is EXPECTED-ERROR.
refused() {
    local name=$1 want=$2 out rc=0
    shift 2
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" = 0 ]; then
        printf 'FAIL %s: succeeded, expected %s\n%s\n' "$name" "$want" "$out" >&2
        exit 1
    fi
    expect "$name" "$want" "$(tail -n 1 <<<"$out")"
}
