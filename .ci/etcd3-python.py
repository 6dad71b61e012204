"""An independent etcd client against dengine-kv: python's `etcd3` package (run by
.ci/etcd3-python.sh against a 3-member cluster). Leases (grant, attach, time-to-live,
refresh, revoke, expiry) and the package's own lock, built on leases, transactions and
watches. Every step is asserted; the first failure ends the run with its message."""

import sys
import threading
import time

import etcd3

endpoints = [e.rsplit(":", 1) for e in sys.argv[1].split(",")]
clients = [etcd3.client(host=h, port=int(p), timeout=10) for h, p in endpoints]
c = clients[0]


def ok(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {name}")


# A lease, a key attached to it, what the lease reports.
lease = c.lease(30)
ok("lease grant", lease.id > 0 and lease.granted_ttl == 30, f"id={lease.id}")
c.put("py/svc", "up", lease=lease)
value, meta = c.get("py/svc")
ok("put with lease", value == b"up" and meta.lease_id == lease.id, f"{meta.lease_id}")
ok("remaining ttl", 25 <= lease.remaining_ttl <= 30, f"{lease.remaining_ttl}")
ok("lease keys", lease.keys == [b"py/svc"], f"{lease.keys}")
# Refreshed through another member.
refreshed = list(clients[1].refresh_lease(lease.id))
ok("refresh through another member", refreshed and refreshed[0].TTL == 30, f"{refreshed}")
lease.revoke()
ok("revoke deletes the key", c.get("py/svc")[0] is None)

# A short lease nobody refreshes expires, and its key goes.
short = c.lease(2)
c.put("py/short", "x", lease=short)
deadline = time.time() + 15
while time.time() < deadline and c.get("py/short")[0] is not None:
    time.sleep(0.2)
ok("an expired lease's key is deleted", c.get("py/short")[0] is None)
ok("an expired lease reports no time left", short.remaining_ttl == -1, f"{short.remaining_ttl}")

# The package's lock: one holder at a time; the next one gets it when the first releases.
first = clients[0].lock("py-lock", ttl=10)
ok("lock acquired", first.acquire(timeout=5))
second = clients[1].lock("py-lock", ttl=10)
ok("a second locker waits", not second.acquire(timeout=1))
got = []
waiter = threading.Thread(target=lambda: got.append(second.acquire(timeout=10)))
waiter.start()
time.sleep(0.5)
first.release()
waiter.join()
ok("the second locker gets it after the release", got == [True])
ok("the holder is the second", second.is_acquired() and not first.is_acquired())
second.release()

# A lock whose holder stops refreshing is released by its lease's expiry.
dead = clients[2].lock("py-dead", ttl=2)
ok("a lock with a 2 s lease", dead.acquire(timeout=5))
after = clients[0].lock("py-dead", ttl=10)
start = time.time()
ok("taken over once the dead holder's lease expired", after.acquire(timeout=15),
   f"after {time.time() - start:.1f} s")
after.release()
print("etcd3 (python) checks passed")
