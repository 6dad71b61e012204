#!/usr/bin/env bash
# An independent etcd client library against a 3-member dengine-kv cluster on loopback:
# python's `etcd3` package (with protobuf < 4, and tenacity 6.1.0: its lock's retry code fails on
# later tenacity releases) runs a lease and lock scenario
# (.ci/etcd3-python.py). Installed from PyPI if missing. Everything started here is stopped on
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/lib.sh
if ! python3 -c 'import etcd3, importlib.metadata as m; assert m.version("tenacity") == "6.1.0"' 2>/dev/null; then
    echo "python etcd3 missing: installing it from PyPI"
    python3 -m pip install -q etcd3 'protobuf<4' 'tenacity==6.1.0'
fi
kv_bin
scratch etcd3-python
cluster3
start3
python3 .ci/etcd3-python.py "$ENDPOINTS"
