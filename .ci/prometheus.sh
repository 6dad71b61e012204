#!/usr/bin/env bash
# Monitoring as an operator would set it up: a 3-member dengine-kv cluster with /metrics on
# each member, `promtool check metrics` on every member's scrape, a real Prometheus scraping
# them every second under a short write and read load, and then every query of
# docs/grafana-dashboard.json evaluated by that Prometheus ($instance as .*, $__rate_interval
# as 1m): each must return data. Installs Debian's prometheus (promtool included) if missing.
# Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
need prometheus prometheus
need promtool prometheus
etcdctl_setup prometheus
cluster3
M=($(port) $(port) $(port))
for h in 1 2 3; do serve "$h" "$h" --initial-members "$MEMBERS" --metrics-addr "127.0.0.1:${M[$((h-1))]}"; done
wait_leader

# get URL: the body of an HTTP GET.
get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }

PROM=$(port)
cat >"$DIR/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: dengine
    static_configs:
      - targets: ["127.0.0.1:${M[0]}", "127.0.0.1:${M[1]}", "127.0.0.1:${M[2]}"]
YML
prometheus --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/tsdb" \
    --web.listen-address="127.0.0.1:$PROM" >"$DIR/prometheus.log" 2>&1 &
PIDS[prometheus]=$!

# Load: writes (some through followers, which forward them) and reads, for about 15 s.
T_END=$(( $(date +%s) + 15 ))
i=0
while [ "$(date +%s)" -lt "$T_END" ]; do
    i=$((i + 1))
    etcdctl --endpoints="127.0.0.1:${C[$((i % 3))]}" put "load-$((i % 50))" "v$i" >/dev/null
    etcdctl --endpoints="$ENDPOINTS" get "load-$((i % 50))" >/dev/null
done
echo "ok   load: $i writes and $i reads"

for h in 0 1 2; do
    get "http://127.0.0.1:${M[$h]}/metrics" >"$DIR/scrape-$h.txt"
    promtool check metrics <"$DIR/scrape-$h.txt" ||
        { echo "FAIL promtool check metrics on member $((h + 1))" >&2; exit 1; }
done
echo "ok   promtool check metrics passes on every member's scrape ($(wc -l <"$DIR/scrape-0.txt") lines)"
for name in process_resident_memory_bytes process_cpu_seconds_total dengine_build_info dengine_has_leader; do
    grep -q "^$name" "$DIR/scrape-0.txt" || { echo "FAIL $name missing from the scrape" >&2; exit 1; }
done
echo "ok   process metrics, build info and has_leader are exported"

# Every dashboard query returns data.
python3 - "$PROM" docs/grafana-dashboard.json <<'PY'
import json, sys, time, urllib.parse, urllib.request
port, path = sys.argv[1], sys.argv[2]
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                exprs.append(x)
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(json.load(open(path)))
def query(expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.load(urllib.request.urlopen(url, timeout=10))
# Prometheus needs a few scrapes (rates need two samples in the window).
for _ in range(60):
    try:
        if query("up")["data"]["result"] and all(r["value"][1] == "1" for r in query("up")["data"]["result"]) \
                and len(query("up")["data"]["result"]) == 3:
            break
    except OSError:
        pass
    time.sleep(0.5)
else:
    sys.exit("FAIL Prometheus did not scrape the three members")
empty = []
for expr in exprs:
    q = expr.replace("$instance", ".*").replace("$__rate_interval", "1m")
    result = query(q)
    if result.get("status") != "success":
        sys.exit(f"FAIL query {q!r}: {result}")
    if not result["data"]["result"]:
        empty.append(q)
if empty:
    sys.exit("FAIL dashboard queries without data:\n  " + "\n  ".join(empty))
print(f"ok   all {len(exprs)} dashboard queries return data")
PY
echo "prometheus checks passed"
