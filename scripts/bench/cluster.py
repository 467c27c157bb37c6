#!/usr/bin/env python3
"""Cluster helpers for `scripts/bench.sh cluster` (stdlib only, loopback only).

  cluster.py wait --timeout S --node ID=PUBLIC=ADMIN ...
      Polls (bounded by --timeout) until every node answers GET /readyz 200 and
      its admin GET /admin/cluster says ready, agreed, with a ring of exactly
      the given ids and the same fingerprint on every node. Prints
      `CLUSTER_READY fingerprint=.. seconds=..`; on timeout prints every view
      on stderr and exits 1.

  cluster.py snapshot --out FILE --node ID=PUBLIC=ADMIN ...
      Fetches each node's admin GET /metrics and stores the parsed samples
      (series -> value) as JSON.

  cluster.py report --before FILE --after FILE [--forward-target-ms 3]
      Differences of the two snapshots (the measured run only), per node and
      summed: checks decided (llmtrace_checks_total, counted where the bucket's
      owner decided), checks accepted on the public listener
      (llmtrace_check_duration_seconds_count), checks forwarded and received,
      mean forwarded batch (Δ llmtrace_forward_batch_size_sum / Δ _count),
      quantiles of llmtrace_forward_duration_seconds (round trip of one
      forwarded batch, per batch) and llmtrace_check_duration_seconds (time to
      decide a check inside the accepting node, local or forwarded), plus the
      cluster counters that must stay 0 in a healthy run (forward errors,
      retries, owner-unreachable decisions, re-forwards, dedup hits, RPC
      refusals, invalid requests). Quantiles are Prometheus-style: linear
      interpolation inside the bucket that holds the rank (lower edge of the
      first bucket 0); the bucket's bounds are printed next to the value.

      "forwarded check p99 (est.)" is the quantile 1 - 0.01 * forwarded/accepted
      of the check-duration histogram (summed over the nodes): if no local
      check is slower than it, exactly 1 % of the forwarded checks are above
      it, so it is the p99 of a forwarded check as its accepting node saw it
      (batch wait + round trip + scheduling); if local checks do reach the
      tail it overestimates. Ends with a machine-readable line
      `CLUSTER_RESULT key=value ...`.
"""

import argparse
import http.client
import json
import sys
import time


def parse_addr(addr):
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def http_get(addr, path, timeout=2.0):
    host, port = parse_addr(addr)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def parse_nodes(specs):
    nodes = []
    for spec in specs:
        parts = spec.split("=")
        if len(parts) != 3:
            raise SystemExit(f"bad --node {spec!r}: expected ID=PUBLIC_ADDR=ADMIN_ADDR")
        nodes.append({"id": parts[0], "public": parts[1], "admin": parts[2]})
    return nodes


# ---------------------------------------------------------------- wait

def node_view(node):
    """(ready, view-or-None, why-not)."""
    try:
        status, _ = http_get(node["public"], "/readyz")
    except (OSError, http.client.HTTPException) as exc:
        return False, None, f"readyz: {exc!r}"
    try:
        astatus, body = http_get(node["admin"], "/admin/cluster")
        view = json.loads(body) if astatus == 200 else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return False, None, f"admin/cluster: {exc!r}"
    if status != 200:
        return False, view, f"readyz {status}"
    if view is None:
        return False, None, f"admin/cluster HTTP {astatus}"
    return True, view, ""


def cmd_wait(args):
    nodes = parse_nodes(args.node)
    ids = sorted(n["id"] for n in nodes)
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    last = {}
    while True:
        fingerprints = set()
        ok = True
        for n in nodes:
            ready, view, why = node_view(n)
            last[n["id"]] = view if view is not None else why
            if not ready:
                ok = False
                continue
            ring = sorted(view.get("ring_members") or [])
            if not (view.get("ready") is True and view.get("agreed") is True and ring == ids):
                ok = False
                continue
            fingerprints.add(view.get("fingerprint"))
        if ok and len(fingerprints) == 1:
            print(f"CLUSTER_READY fingerprint={fingerprints.pop()} seconds={time.monotonic() - t0:.2f}")
            return 0
        if time.monotonic() >= deadline:
            print(f"cluster of {ids} did not converge within {args.timeout}s; last views:", file=sys.stderr)
            for nid, v in last.items():
                if isinstance(v, dict):
                    v = {k: v.get(k) for k in ("ready", "agreed", "fingerprint", "ring_members")}
                print(f"  {nid}: {v}", file=sys.stderr)
            return 1
        time.sleep(0.1)


# ---------------------------------------------------------------- snapshot

def parse_metrics(text):
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            series, value = line.rsplit(None, 1)
            samples[series] = float(value)
        except ValueError:
            continue
    return samples


def cmd_snapshot(args):
    nodes = parse_nodes(args.node)
    out = {"time": time.time(), "nodes": []}
    for n in nodes:
        status, text = http_get(n["admin"], "/metrics", timeout=args.timeout)
        if status != 200:
            print(f"{n['id']}: GET /metrics -> HTTP {status}", file=sys.stderr)
            return 1
        out["nodes"].append({"id": n["id"], "samples": parse_metrics(text)})
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


# ---------------------------------------------------------------- report

def histogram(samples, name):
    """[(upper_bound, cumulative_count)] sorted, +Inf last."""
    buckets = []
    prefix = name + "_bucket{"
    for series, v in samples.items():
        if not series.startswith(prefix):
            continue
        le = series.split('le="', 1)[1].split('"', 1)[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    return buckets


def delta_hist(before, after):
    b = dict(before)
    return [(le, c - b.get(le, 0.0)) for le, c in after]


def add_hist(a, b):
    if not a:
        return list(b)
    return [(le, c1 + c2) for (le, c1), (_, c2) in zip(a, b)]


def against_target(q, target, empty):
    """Verdict of a (value, lower, upper) quantile against a target (seconds).

    The buckets are coarse: the verdict is certain only when the whole bucket
    holding the quantile is on one side of the target."""
    if q is None:
        return empty
    if q[2] <= target:
        return "met"
    if q[1] >= target:
        return "NOT met"
    return ("probably met" if q[0] <= target else "probably NOT met") + \
        ": the target lies inside the bucket"


def quantile(q, buckets):
    """(value_s, lower_s, upper_s) or None when empty. Prometheus-style."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank and c > prev_c:
            if le == float("inf"):
                return prev_le, prev_le, le
            v = prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
            return v, prev_le, le
        prev_le, prev_c = le, c
    return None


def fmt_ms(s):
    if s == float("inf"):
        return "+Inf"
    return f"{s * 1000:.2f} ms" if s >= 0.001 else f"{s * 1e6:.0f} us"


def fmt_q(res):
    if res is None:
        return "n/a (no observations)"
    v, lo, hi = res
    if hi == float("inf"):
        return f"> {fmt_ms(lo)} (in the +Inf bucket)"
    return f"{fmt_ms(v)} (bucket {fmt_ms(lo)}..{fmt_ms(hi)})"


def total(samples, name):
    """Sum of every series of a metric (any labels)."""
    t = 0.0
    for series, v in samples.items():
        if series == name or series.startswith(name + "{"):
            t += v
    return t


def one(samples, series):
    return samples.get(series, 0.0)


WATCH = [
    ("llmtrace_forward_errors_total", "forward errors (batches)"),
    ("llmtrace_forward_retries_total", "forward retries"),
    ("llmtrace_owner_unreachable_total", "owner-unreachable decisions"),
    ("llmtrace_reforwarded_checks_total", "re-forwarded checks"),
    ("llmtrace_forward_dedup_hits_total", "dedup hits"),
    ("llmtrace_rpc_rejected_auth_total", "RPC refused (auth)"),
    ("llmtrace_rpc_rejected_body_total", "RPC refused (body)"),
    ("llmtrace_invalid_requests_total", "invalid requests"),
    ("llmtrace_ring_changes_total", "ring changes"),
]


def cmd_report(args):
    with open(args.before) as f:
        before = json.load(f)
    with open(args.after) as f:
        after = json.load(f)
    secs = max(after["time"] - before["time"], 1e-9)
    rows = []
    sum_fwd_h, sum_chk_h, sum_xch_h = [], [], []
    tot = {"decided": 0.0, "refused": 0.0, "accepted": 0.0, "forwarded": 0.0, "rpc": 0.0,
           "bsum": 0.0, "bcount": 0.0}
    watch = {name: 0.0 for name, _ in WATCH}
    for nb, na in zip(before["nodes"], after["nodes"]):
        b, a = nb["samples"], na["samples"]
        d = lambda s: one(a, s) - one(b, s)  # noqa: E731
        allowed = d('llmtrace_checks_total{limit="requests",decision="allowed"}')
        refused = d('llmtrace_checks_total{limit="requests",decision="refused"}')
        r = {
            "id": na["id"],
            "decided": allowed + refused,
            "refused": refused,
            "accepted": d("llmtrace_check_duration_seconds_count"),
            "forwarded": d("llmtrace_forwarded_checks_total"),
            "rpc": d("llmtrace_rpc_checks_total"),
            "bsum": d("llmtrace_forward_batch_size_sum"),
            "bcount": d("llmtrace_forward_batch_size_count"),
        }
        fh = delta_hist(histogram(b, "llmtrace_forward_duration_seconds"),
                        histogram(a, "llmtrace_forward_duration_seconds"))
        ch = delta_hist(histogram(b, "llmtrace_check_duration_seconds"),
                        histogram(a, "llmtrace_check_duration_seconds"))
        xh = delta_hist(histogram(b, "llmtrace_forwarded_check_duration_seconds"),
                        histogram(a, "llmtrace_forwarded_check_duration_seconds"))
        sum_xch_h = add_hist(sum_xch_h, xh)
        r["fwd_p99"] = quantile(0.99, fh)
        r["chk_p99"] = quantile(0.99, ch)
        sum_fwd_h = add_hist(sum_fwd_h, fh)
        sum_chk_h = add_hist(sum_chk_h, ch)
        for k in tot:
            tot[k] += r[k]
        for name, _ in WATCH:
            watch[name] += total(a, name) - total(b, name)
        rows.append(r)

    print(f"  per node over the measured run ({secs:.1f} s between metric reads):")
    print(f"    {'node':<8} {'accepted':>10} {'decided':>10} {'forwarded':>10} {'fwd share':>9}"
          f" {'rpc recv':>10} {'batch':>6} {'batch rtt p99':>14} {'check p99':>12}")
    for r in rows:
        share = r["forwarded"] / r["accepted"] if r["accepted"] else 0.0
        mean = r["bsum"] / r["bcount"] if r["bcount"] else 0.0
        fq = "n/a" if r["fwd_p99"] is None else fmt_ms(r["fwd_p99"][0])
        cq = "n/a" if r["chk_p99"] is None else fmt_ms(r["chk_p99"][0])
        print(f"    {r['id']:<8} {r['accepted']:>10.0f} {r['decided']:>10.0f} {r['forwarded']:>10.0f}"
              f" {share:>9.3f} {r['rpc']:>10.0f} {mean:>6.1f} {fq:>14} {cq:>12}")

    share = tot["forwarded"] / tot["decided"] if tot["decided"] else 0.0
    mean_batch = tot["bsum"] / tot["bcount"] if tot["bcount"] else 0.0
    fwd_p50 = quantile(0.50, sum_fwd_h)
    fwd_p99 = quantile(0.99, sum_fwd_h)
    chk_p50 = quantile(0.50, sum_chk_h)
    chk_p99 = quantile(0.99, sum_chk_h)
    fshare_acc = tot["forwarded"] / tot["accepted"] if tot["accepted"] else 0.0
    est = quantile(1 - 0.01 * fshare_acc, sum_chk_h) if fshare_acc > 0 else None
    target = args.forward_target_ms / 1000
    verdict = against_target(fwd_p99, target, "no forwarded batches")

    print(f"  checks decided (owner)  {tot['decided']:12.0f}            "
          f"(accepted on public listeners: {tot['accepted']:.0f}; refused: {tot['refused']:.0f})")
    print(f"  forwarded share        {share:12.3f}            "
          f"(forwarded {tot['forwarded']:.0f} / decided; expected ~0.667 with 3 nodes;"
          f" received by peers {tot['rpc']:.0f})")
    print(f"  mean forwarded batch   {mean_batch:12.1f} checks     "
          f"(Δ batch_size_sum / Δ count: {tot['bsum']:.0f} / {tot['bcount']:.0f} batches,"
          f" {tot['bcount'] / secs:.0f} batches/s)")
    print(f"  forward round trip p99 {fmt_q(fwd_p99)}   (per batch, all nodes;"
          f" target <= {args.forward_target_ms:g} ms: {verdict})")
    print(f"  forward round trip p50 {fmt_q(fwd_p50)}")
    xch_p50 = quantile(0.50, sum_xch_h)
    xch_p99 = quantile(0.99, sum_xch_h)
    xverdict = against_target(xch_p99, target, "no forwarded checks")
    print(f"  forwarded check p99    {fmt_q(xch_p99)}   (llmtrace_forwarded_check_duration_seconds:"
          f" hand-off to forwarder until answer, batch wait included; target <= {args.forward_target_ms:g} ms: {xverdict})")
    print(f"  forwarded check p50    {fmt_q(xch_p50)}")
    print(f"  check duration p50/p99 {fmt_q(chk_p50)} / {fmt_q(chk_p99)}   (in the accepting node, local and forwarded)")
    bad = [(label, watch[name]) for name, label in WATCH if watch[name] != 0]
    if tot["refused"]:
        bad.append(("refused checks (429)", tot["refused"]))
    if abs(tot["rpc"] - tot["forwarded"]) > 0.001 * max(tot["forwarded"], 1) + 64:
        bad.append(("forwarded - received by peers", tot["forwarded"] - tot["rpc"]))
    if bad:
        for label, v in bad:
            print(f"  !! {label}: {v:.0f} during the run")
    else:
        print("  cluster counters       forward errors, retries, owner-unreachable, re-forwards,"
              " dedup hits, RPC refusals, invalid requests, ring changes, 429: all 0")

    def val(res):
        return "na" if res is None else ("inf" if res[0] == float("inf") else f"{res[0] * 1e6:.0f}")

    print(f"CLUSTER_RESULT decided={tot['decided']:.0f} accepted={tot['accepted']:.0f}"
          f" forwarded={tot['forwarded']:.0f} forwarded_share={share:.4f}"
          f" mean_batch={mean_batch:.2f} batches={tot['bcount']:.0f}"
          f" fwd_rtt_p50_us={val(fwd_p50)} fwd_rtt_p99_us={val(fwd_p99)}"
          f" fwd_check_p99_us={val(xch_p99)} check_p50_us={val(chk_p50)} check_p99_us={val(chk_p99)}"
          f" anomalies={len(bad)}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--timeout", type=float, default=20.0)
    w.add_argument("--node", action="append", required=True, metavar="ID=PUBLIC=ADMIN")
    s = sub.add_parser("snapshot")
    s.add_argument("--out", required=True)
    s.add_argument("--timeout", type=float, default=10.0)
    s.add_argument("--node", action="append", required=True, metavar="ID=PUBLIC=ADMIN")
    r = sub.add_parser("report")
    r.add_argument("--before", required=True)
    r.add_argument("--after", required=True)
    r.add_argument("--forward-target-ms", type=float, default=3.0)
    args = p.parse_args()
    return {"wait": cmd_wait, "snapshot": cmd_snapshot, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
