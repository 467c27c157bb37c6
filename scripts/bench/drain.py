#!/usr/bin/env python3
"""Drive POST /v1/check/batch for `scripts/bench.sh memory` (stdlib only).

Sends one check of `--cost` for each of `--tenants` distinct tenant ids
("<prefix><i>" for i in 0..tenants-1), `--batch` items per request, over
keep-alive HTTP/1.1 connections (one per thread). Bounded: every request has a
socket timeout and the whole run a deadline; it stops at the first failed
request and exits non-zero.

Prints one machine-readable line on success:
  DRAIN_RESULT tenants=.. requests=.. seconds=.. checks_per_s=.. allowed=.. denied=.. other=..

`--metrics ADMIN_ADDR` instead fetches GET /metrics and prints
  METRIC llmtrace_buckets_resident <sum over all label sets>
(and any other names given with --metric).
"""

import argparse
import http.client
import json
import sys
import threading
import time


def parse_addr(addr):
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def fetch_metrics(admin, names, timeout):
    host, port = parse_addr(admin)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        if resp.status != 200:
            print(f"metrics: HTTP {resp.status}: {text[:200]}", file=sys.stderr)
            return 1
    finally:
        conn.close()
    for name in names:
        total = None
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            # "name value" or "name{labels} value"
            if line.startswith(name + " ") or line.startswith(name + "{"):
                try:
                    value = float(line.rsplit(None, 1)[1])
                except (IndexError, ValueError):
                    continue
                total = value if total is None else total + value
        shown = "missing" if total is None else (f"{total:.0f}" if total == int(total) else f"{total}")
        print(f"METRIC {name} {shown}")
    return 0


class Drainer:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.next_start = 0
        self.requests = 0
        self.allowed = 0
        self.denied = 0
        self.other = 0
        self.error = None
        self.deadline = time.monotonic() + args.deadline

    def take(self):
        with self.lock:
            if self.error is not None or self.next_start >= self.args.tenants:
                return None
            start = self.next_start
            self.next_start = min(start + self.args.batch, self.args.tenants)
            return start, self.next_start

    def fail(self, msg):
        with self.lock:
            if self.error is None:
                self.error = msg

    def body(self, start, end):
        prefix = self.args.prefix
        cost = self.args.cost
        checks = [{"tenant_id": f"{prefix}{i}", "cost": cost} for i in range(start, end)]
        return json.dumps({"checks": checks}, separators=(",", ":")).encode()

    def run_thread(self):
        host, port = parse_addr(self.args.addr)
        conn = http.client.HTTPConnection(host, port, timeout=self.args.timeout)
        headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        try:
            while True:
                if time.monotonic() > self.deadline:
                    self.fail(f"deadline of {self.args.deadline}s exceeded")
                    return
                chunk = self.take()
                if chunk is None:
                    return
                start, end = chunk
                payload = self.body(start, end)
                try:
                    conn.request("POST", "/v1/check/batch", body=payload, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    self.fail(f"request for tenants {start}..{end}: {exc!r}")
                    return
                if resp.status != 200:
                    self.fail(f"HTTP {resp.status} for tenants {start}..{end}: {data[:300]!r}")
                    return
                try:
                    results = json.loads(data)["results"]
                except (ValueError, KeyError, TypeError) as exc:
                    self.fail(f"bad batch response ({exc!r}): {data[:300]!r}")
                    return
                if len(results) != end - start:
                    self.fail(f"got {len(results)} results for {end - start} checks")
                    return
                a = d = o = 0
                for r in results:
                    v = r.get("allowed") if isinstance(r, dict) else None
                    if v is True:
                        a += 1
                    elif v is False:
                        d += 1
                    else:
                        o += 1
                with self.lock:
                    self.requests += 1
                    self.allowed += a
                    self.denied += d
                    self.other += o
        finally:
            conn.close()

    def run(self):
        t0 = time.monotonic()
        threads = [threading.Thread(target=self.run_thread, daemon=True) for _ in range(self.args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            # Threads stop on their own (deadline + socket timeouts); bound the join too.
            t.join(max(0.0, self.deadline - time.monotonic()) + 2 * self.args.timeout)
        secs = time.monotonic() - t0
        if any(t.is_alive() for t in threads):
            self.fail("a drain thread did not finish in time")
        if self.error is not None:
            print(f"drain failed: {self.error}", file=sys.stderr)
            return 1
        done = self.allowed + self.denied + self.other
        print(
            f"DRAIN_RESULT tenants={done} requests={self.requests} seconds={secs:.2f} "
            f"checks_per_s={done / secs if secs > 0 else 0:.0f} "
            f"allowed={self.allowed} denied={self.denied} other={self.other}"
        )
        return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", help="public HOST:PORT of the node")
    p.add_argument("--tenants", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000, help="checks per request (node max 1000)")
    p.add_argument("--cost", type=int, default=1000)
    p.add_argument("--prefix", default="t", help="tenant id prefix")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=30.0, help="per-request socket timeout, s")
    p.add_argument("--deadline", type=float, default=900.0, help="whole-run limit, s")
    p.add_argument("--metrics", metavar="ADMIN_ADDR", help="print metrics instead of draining")
    p.add_argument("--metric", action="append", default=[], help="metric name(s) for --metrics")
    args = p.parse_args()

    if args.metrics:
        return fetch_metrics(args.metrics, args.metric or ["llmtrace_buckets_resident"], args.timeout)
    if not args.addr:
        p.error("--addr is required unless --metrics is given")
    if args.tenants < 0 or not 1 <= args.batch or args.threads < 1:
        p.error("bad --tenants/--batch/--threads")
    return Drainer(args).run()


if __name__ == "__main__":
    sys.exit(main())
