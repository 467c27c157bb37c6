#!/usr/bin/env python3
"""Failover time for `scripts/bench.sh failover` (stdlib only, loopback only).

  failover.py --victim ID --victim-pid PID --tenants N --deadline S --node ID=PUBLIC=ADMIN ...

Before the kill: finds which of the tenants f-0 .. f-(N-1) the victim owns (admin
GET /admin/tenants/{t} on the first survivor), takes one unit of every tenant through
/v1/check/batch (so each victim-owned bucket is resident and not full) and waits for
the victim's llmtrace_snapshot_writes_total to cover them (write-behind, default
100 ms interval).

Then sends SIGKILL to the victim and, without pause, posts one /v1/check/batch of
every victim-owned tenant (cost 1) to each survivor in turn. A tenant counts as
served again when its item is decided normally: 200 or 429 and not "degraded" (a
degraded answer is the survivor's on_owner_unreachable policy deciding without the
owner). Failover time = from the kill until a round in which every victim-owned
tenant was served normally by every survivor (the first such round; later rounds
are checked too, and a relapse is reported). Also reports when the survivors'
/admin/cluster views agreed on a ring without the victim, the degraded and failed
answers seen meanwhile, and the restores from Redis on the survivors
(llmtrace_restore_hits_total).

Prints `FAILOVER_RESULT seconds=.. converged_s=.. tenants=.. degraded=.. errors=..
restore_hits=.. rounds=..`.
"""

import argparse
import http.client
import json
import os
import signal
import sys
import time


def parse_addr(addr):
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


class Conn:
    """A keep-alive HTTP connection that reconnects after an error."""

    def __init__(self, addr, timeout=5.0):
        self.addr = addr
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None):
        host, port = parse_addr(self.addr)
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def metric(conn, name):
    status, text = conn.request("GET", "/metrics")
    if status != 200:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


def batch(conn, tenants):
    body = json.dumps({"checks": [{"tenant_id": t, "cost": 1} for t in tenants]})
    status, text = conn.request("POST", "/v1/check/batch", body)
    if status != 200:
        return None, f"HTTP {status}: {text[:200]}"
    return json.loads(text)["results"], None


def ring_without(conn, victim):
    try:
        status, text = conn.request("GET", "/admin/cluster")
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    view = json.loads(text)
    ring = view.get("ring_members") or [
        m["node_id"] for m in view.get("members", []) if m.get("share", 0) > 0
    ]
    if victim in ring or not view.get("agreed"):
        return None
    return view.get("fingerprint")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", required=True)
    p.add_argument("--victim-pid", type=int, required=True)
    p.add_argument("--victim-admin", required=True)
    p.add_argument("--tenants", type=int, default=1000)
    p.add_argument("--deadline", type=float, default=30.0)
    p.add_argument("--node", action="append", default=[], help="survivor ID=PUBLIC=ADMIN")
    args = p.parse_args()
    survivors = []
    for spec in args.node:
        nid, public, admin = spec.split("=")
        survivors.append({"id": nid, "public": Conn(public), "admin": Conn(admin)})
    first = survivors[0]

    owned = []
    for i in range(args.tenants):
        t = f"f-{i}"
        status, text = first["admin"].request("GET", f"/admin/tenants/{t}")
        if status == 200 and json.loads(text).get("owner") == args.victim:
            owned.append(t)
    if not owned:
        print("no tenant owned by the victim", file=sys.stderr)
        return 1
    tenants = [f"f-{i}" for i in range(args.tenants)]
    for k in range(0, len(tenants), 1000):
        results, err = batch(first["public"], tenants[k:k + 1000])
        if err:
            print(f"warm-up batch failed: {err}", file=sys.stderr)
            return 1
    victim_admin = Conn(args.victim_admin)
    deadline = time.monotonic() + 20
    while metric(victim_admin, "llmtrace_snapshot_writes_total") < len(owned):
        if time.monotonic() > deadline:
            print("the victim did not snapshot its tenants within 20 s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    hits_before = sum(metric(s["admin"], "llmtrace_restore_hits_total") for s in survivors)

    killed = time.monotonic()
    os.kill(args.victim_pid, signal.SIGKILL)
    served_at = None
    converged_at = None
    degraded = errors = rounds = relapses = 0
    clean_rounds_after = 0
    while True:
        now = time.monotonic()
        if now - killed > args.deadline:
            break
        rounds += 1
        round_ok = True
        for s in survivors:
            try:
                results, err = batch(s["public"], owned)
            except (OSError, http.client.HTTPException) as exc:
                results, err = None, repr(exc)
            if err:
                errors += len(owned)
                round_ok = False
                continue
            for r in results:
                if "error" in r:
                    errors += 1
                    round_ok = False
                elif r.get("degraded"):
                    degraded += 1
                    round_ok = False
        if converged_at is None:
            fps = {ring_without(s["admin"], args.victim) for s in survivors}
            if None not in fps and len(fps) == 1:
                converged_at = time.monotonic() - killed
        if round_ok:
            if served_at is None:
                served_at = time.monotonic() - killed
            clean_rounds_after += 1
            if clean_rounds_after >= 20 and converged_at is not None:
                break
        elif served_at is not None:
            relapses += 1
    if served_at is None:
        print(f"not every tenant was served normally again within {args.deadline} s", file=sys.stderr)
        return 1
    hits = sum(metric(s["admin"], "llmtrace_restore_hits_total") for s in survivors) - hits_before
    print(
        f"  {len(owned)} of {args.tenants} tenants were owned by {args.victim}; every one of them was "
        f"served normally by both survivors {served_at:.2f} s after the kill (rings agreed after "
        f"{converged_at if converged_at is not None else float('nan'):.2f} s); meanwhile {degraded} "
        f"degraded and {errors} failed answers in {rounds} rounds; {hits:.0f} buckets restored from "
        f"Redis; relapses after recovery: {relapses}"
    )
    print(
        f"FAILOVER_RESULT seconds={served_at:.3f} converged_s={converged_at if converged_at is not None else -1:.3f} "
        f"tenants={len(owned)} degraded={degraded} errors={errors} restore_hits={hits:.0f} "
        f"rounds={rounds} relapses={relapses}"
    )
    return 0 if relapses == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
