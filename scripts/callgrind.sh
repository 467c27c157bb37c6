#!/usr/bin/env bash
# Instructions per check of one node, counted by callgrind (valgrind), so the
# figure does not depend on the load of the machine.
#
#   scripts/callgrind.sh BINARY [MODE] [CONFIG]
#
# MODE: `seed` ({"tenant_id", "cost": 10}, the default), `d1` (one
# descriptor of `requests`) or `d3` (three: `requests`, `rpm`, `daily`; give a
# CONFIG defining `[limits.rpm]` and `[limits.daily]`). The node runs with one
# HTTP worker and one shard, `requests` at 1/s with a burst of 10^9, so every
# check is allowed; one keep-alive connection posts checks over 1,000 keys.
# Per check = (total for 12,000 checks - total for 2,000) / 10,000: start-up
# and shutdown cancel out. Needs valgrind and python3.
set -euo pipefail
bin=${1:?usage: scripts/callgrind.sh BINARY [seed|d1|d3] [CONFIG]}
mode=${2:-seed}
config=${3:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat > "$tmp/load.py" <<'EOF'
import http.client, json, sys
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def body(i):
    k = f"t{i}"
    if mode == "seed":
        return {"tenant_id": k, "cost": 10}
    first = [{"limit": "requests", "key": k, "cost": 10}]
    if mode == "d1":
        return {"descriptors": first}
    return {"descriptors": first + [{"limit": "rpm", "key": k}, {"limit": "daily", "key": k}]}
bodies = [json.dumps(body(i)).encode() for i in range(1000)]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for i in range(n):
    c.request("POST", "/v1/check", body=bodies[i % 1000],
              headers={"content-type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"check {i}: status {r.status}")
EOF

# Instructions of the node answering $1 checks.
run() {
    local n=$1 out="$tmp/callgrind.$1" log="$tmp/node.$1" extra=()
    [ -n "$config" ] && extra=(--config "$config")
    LLMTRACE_SHUTDOWN_GRACE_MS=0 valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" "${extra[@]}" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --cluster-listen 127.0.0.1:0 --http-workers 1 --shards 1 \
        --requests-per-second 1 --burst-size 1000000000 >"$log" 2>&1 &
    local pid=$! port=""
    for _ in $(seq 600); do
        port=$(grep -o 'public=127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2 || true)
        [ -n "$port" ] && break
        sleep 0.2
    done
    [ -n "$port" ] || { kill "$pid"; cat "$log" >&2; exit 1; }
    python3 "$tmp/load.py" "$port" "$n" "$mode"
    kill -TERM "$pid"
    wait "$pid" || true
    grep -h '^summary:\|^totals:' "$out" | head -1 | awk '{print $2}'
}

small=$(run 2000)
large=$(run 12000)
echo "$mode: $(( (large - small) / 10000 )) instructions per check ($bin)"
