#!/usr/bin/env bash
# Benchmarks for the llmtrace cluster node.
#
#   scripts/bench.sh [single|memory|cluster|redis|failover|proxy|all]     (default: all)
#
# single  wrk (scripts/bench/check.lua) posts /v1/check with random tenants out of
#         100,000 over keep-alive connections, first against llmtrace-node, then
#         against llmtrace-plain-bench (a bare actix-web server that parses the same
#         body and answers a constant: the ceiling). Prints checks/s, p50, p99 and
#         the ratio node/plain (target >= 0.7), plus each server's CPU time per
#         check (steadier than checks/s on a 2-core machine that wrk shares).
#         The node runs in memory with --requests-per-second 1
#         --burst-size 1000000000 and every check costs 10: each tenant spends
#         faster than it refills, so its bucket stays resident (not full, never
#         swept) and every check is allowed for ~10^8 s. That measures the hot
#         path; a 429 there would be a bug (wrk counts it as non-2xx).
#         BENCH_RPS=1000000 BENCH_BURST=1000000 BENCH_COST=1 instead makes every
#         bucket full again within microseconds, so the 1 s sweep drops it and
#         most checks go through a snapshot restore (the "cold" path). The
#         node's restore/eviction counters are printed after its run.
# memory  starts a node in memory with --requests-per-second 1 --burst-size 1000,
#         sends one warm-up batch, reads VmRSS (idle baseline), drains
#         1,000,000 distinct tenants (one check of cost 1000 each, so every bucket
#         ends empty and must stay resident) through /v1/check/batch, 1000 items a
#         request (scripts/bench/drain.py), reads VmRSS again and prints
#         (after - idle) / tenants bytes per tenant (target <= 150), plus
#         llmtrace_buckets_resident from the admin /metrics.
# cluster first a single-node reference, then 3 nodes on this machine (node-0
#         without seeds, node-1 and node-2 seeded with node-0's cluster
#         address; the run starts once all three answer /readyz 200 and
#         /admin/cluster shows agreed: true with a ring of exactly the three,
#         bounded by BENCH_CLUSTER_WAIT). Both runs use the node settings of
#         `single` (hot path, every check allowed) and the same client: wrk
#         can only talk to one host per process, so there are 3 wrk processes
#         in parallel, -t1 each, the BENCH_CONNECTIONS connections split over
#         them (64 -> 22+21+21), same duration and warm-up, all against the
#         one node for the reference and one per node for the cluster (3 wrk
#         threads in all, versus BENCH_THREADS in `single`). With random
#         tenants ~2/3 of the checks land on a node that does not own the
#         bucket and are forwarded, batched, to the owner. Prints checks/s
#         (sum of the 3 wrk), client p50/p99 per wrk (and the worst p99), the
#         ratio cluster/single (target >= 0.6), server CPU per check, and from
#         the admin /metrics read before and after the measured run
#         (scripts/bench/cluster.py): forwarded share (Δ forwarded_checks /
#         Δ checks decided, ~0.67), mean forwarded batch (Δ batch_size_sum /
#         Δ count), p99 of the forward round trip (llmtrace_forward_duration_
#         seconds, per batch, linearly interpolated inside its Prometheus
#         bucket) and the forwarded-check p99 (llmtrace_forwarded_check_
#         duration_seconds: hand-off to the forwarder until the answer, batch
#         wait included; target <= 3 ms), plus any forward error/retry/
#         unreachable counts. The three nodes share this machine's cores with
#         each other and with wrk, so each runs one HTTP worker by default
#         (BENCH_CLUSTER_ARGS="--http-workers 1": a node sized to its share of
#         the cores, as it would be on its own machine); set BENCH_CLUSTER_ARGS
#         to compare (2 workers per node oversubscribes 2 cores 3 times).
# redis   a node snapshotting to its own redis-server (started here on a free
#         loopback port, no persistence), every check allowed (the `single`
#         quota: rps 1, burst 10^9, cost 10) over BENCH_HOT_TENANTS (1000) hot
#         tenants. For each snapshot interval in BENCH_REDIS_INTERVALS (default
#         "100 1000" ms; 100 is the default) the same node is loaded at two
#         offered rates: BENCH_REDIS_CONNS connections, then twice as many, each
#         pausing BENCH_REDIS_DELAY_MS before every request (wrk delay()), so the
#         second level offers twice the first. Redis commands per second come from
#         `INFO commandstats` (SET and GET calls) read right before and after each
#         measured run. Write-behind writes each dirty bucket at most once per
#         interval, so SET/s <= min(checks/s, tenants * 1000 / interval_ms); once
#         (nearly) every hot bucket is dirty in every interval, doubling the check
#         rate leaves Redis traffic unchanged. Prints checks/s, SET/s, the bound,
#         and the ratios. Then the cost of write-through: the same node settings
#         with --snapshot-mode write-behind and write-through, wrk as in `single`
#         (as fast as they answer) over the hot tenants: checks/s, p50/p99, SET/s
#         and the throughput ratio write-through / write-behind.
# failover  redis-server and 3 nodes with default settings (write-behind 100 ms,
#         on_owner_unreachable local, phi 8, gossip 100 ms); tenants f-0 ..
#         f-(BENCH_FAILOVER_TENANTS-1) get one check each, node-2 is killed with
#         SIGKILL, and scripts/bench/failover.py measures the time until every
#         tenant node-2 owned is decided normally (200/429, not degraded) by both
#         survivors (target <= 5 s), plus when their rings agreed and the degraded
#         answers meanwhile. Repeated BENCH_FAILOVER_RUNS times (default 3).
# proxy   the latency proxy mode adds: the stub OpenAI-compatible upstream of
#         the integration tests (target/release/llmtrace-stub-upstream, a
#         thread per connection) and a node with --proxy-upstream pointing at
#         it (request and token limits on, every call admitted: huge bursts,
#         reconcile refunding). wrk (scripts/bench/proxy.lua: non-streaming
#         chat completions, one of BENCH_TENANT_SPACE bearer keys each) runs
#         first against the stub directly, then through the proxy, with
#         BENCH_PROXY_CONNECTIONS connections (default 8) and one wrk thread,
#         each connection pausing BENCH_PROXY_DELAY_MS before every request
#         (default 0: closed loop, as fast as the proxy answers, i.e. full
#         load; e.g. 2 offers at most 4,000 requests/s with 8 connections, a
#         moderate load). Prints p50/p99 of both, the added p50/p99 (proxied
#         minus direct; target <= 1 ms added p99) and proxied requests/s.
#
# Environment:
#   BENCH_DURATION=10s     wrk measuring time (wrk syntax: 10, 10s, 1m)
#   BENCH_WARMUP=2s        wrk warm-up run before each measurement (0 = none)
#   BENCH_CONNECTIONS=64   wrk connections
#   BENCH_THREADS=2        wrk threads
#   BENCH_TENANT_SPACE=100000  distinct tenant ids in the single benchmark
#   BENCH_STATUS=0         1 = count wrk responses per HTTP status (costs client CPU)
#   BENCH_RPS=1 BENCH_BURST=1000000000 BENCH_COST=10   node quota and check cost (single)
#   BENCH_SHARDS=          passed as --shards to the node when set
#   BENCH_WORKERS=         passed as --http-workers to the node and --workers to
#                          plain-bench when set (defaults of each binary otherwise)
#   BENCH_NODE_ARGS=       extra node arguments (word-split), e.g. "--redis-url redis://127.0.0.1:6379"
#   BENCH_TENANTS=1000000  tenants drained in the memory benchmark
#   BENCH_DRAIN_THREADS=2  Python threads (keep-alive connections) for the drain
#   BENCH_DRAIN_DEADLINE=900  seconds the drain may take in all
#   BENCH_CLUSTER_ARGS="--http-workers 1"  extra arguments for the 3 cluster nodes
#                          only (word-split), e.g. "--http-workers 1 --forward-batch-wait-us 100"
#   BENCH_CLUSTER_WAIT=20  seconds the 3 nodes may take to converge on one ring
#   BENCH_CLUSTER_SETTLE=11  seconds to wait after convergence, past the 10 s handoff
#                          window (0: measure the cluster right after it formed)
#   BENCH_HOT_TENANTS=1000     hot tenants of the redis benchmark
#   BENCH_REDIS_INTERVALS="100 1000"  snapshot intervals (ms) of the redis benchmark
#   BENCH_REDIS_CONNS=16 BENCH_REDIS_DELAY_MS=2   first load level of the redis
#                          benchmark (second: 2 x BENCH_REDIS_CONNS)
#   BENCH_FAILOVER_TENANTS=1000 BENCH_FAILOVER_RUNS=3   failover benchmark
#   BENCH_PROXY_CONNECTIONS=8 BENCH_PROXY_DELAY_MS=0   proxy benchmark: wrk
#                          connections, and each one's pause before a request
#   BENCH_SKIP_BUILD=0     1 = use the binaries already in target/release
#
# Only 127.0.0.1 is used: every server binds ephemeral ports there. Every load run
# is bounded (wrk by -d and `timeout`, the drain by its tenant count and deadline).
# Started processes are stopped on exit.

set -euo pipefail

MODE="${1:-all}"
case "$MODE" in
  single|memory|cluster|redis|failover|proxy|all) ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "usage: $0 [single|memory|cluster|redis|failover|proxy|all]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="$ROOT/scripts/bench"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
NODE_BIN="$TARGET_DIR/release/llmtrace-node"
PLAIN_BIN="$TARGET_DIR/release/llmtrace-plain-bench"

BENCH_DURATION="${BENCH_DURATION:-10s}"
BENCH_WARMUP="${BENCH_WARMUP:-2s}"
BENCH_CONNECTIONS="${BENCH_CONNECTIONS:-64}"
BENCH_THREADS="${BENCH_THREADS:-2}"
BENCH_TENANT_SPACE="${BENCH_TENANT_SPACE:-100000}"
BENCH_STATUS="${BENCH_STATUS:-0}"
BENCH_RPS="${BENCH_RPS:-1}"
BENCH_BURST="${BENCH_BURST:-1000000000}"
BENCH_COST="${BENCH_COST:-10}"
BENCH_SHARDS="${BENCH_SHARDS:-}"
BENCH_WORKERS="${BENCH_WORKERS:-}"
BENCH_NODE_ARGS="${BENCH_NODE_ARGS:-}"
BENCH_TENANTS="${BENCH_TENANTS:-1000000}"
BENCH_DRAIN_THREADS="${BENCH_DRAIN_THREADS:-2}"
BENCH_DRAIN_DEADLINE="${BENCH_DRAIN_DEADLINE:-900}"
BENCH_CLUSTER_ARGS="${BENCH_CLUSTER_ARGS---http-workers 1}"
BENCH_CLUSTER_WAIT="${BENCH_CLUSTER_WAIT:-20}"
BENCH_CLUSTER_SETTLE="${BENCH_CLUSTER_SETTLE:-11}"
BENCH_SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
BENCH_HOT_TENANTS="${BENCH_HOT_TENANTS:-1000}"
BENCH_REDIS_INTERVALS="${BENCH_REDIS_INTERVALS:-100 1000}"
BENCH_REDIS_CONNS="${BENCH_REDIS_CONNS:-16}"
BENCH_REDIS_DELAY_MS="${BENCH_REDIS_DELAY_MS:-2}"
BENCH_FAILOVER_TENANTS="${BENCH_FAILOVER_TENANTS:-1000}"
BENCH_FAILOVER_RUNS="${BENCH_FAILOVER_RUNS:-3}"
BENCH_PROXY_CONNECTIONS="${BENCH_PROXY_CONNECTIONS:-8}"
BENCH_PROXY_DELAY_MS="${BENCH_PROXY_DELAY_MS:-0}"
STUB_BIN="$TARGET_DIR/release/llmtrace-stub-upstream"
export BENCH_TENANT_SPACE BENCH_STATUS BENCH_COST

WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/llmtrace-bench.XXXXXX")"
PIDS=()

log() { printf '%s\n' "$*" >&2; }

stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop on SIGTERM within 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Runs a bounded load command as a background child and waits for it, so a
# SIGTERM/SIGINT to this script is handled at once (bash runs traps only
# between foreground commands) and cleanup can stop the child too.
LOAD_PID=""
LOAD_PIDS=()   # parallel load commands (run_wrk_multi)
run_load() {
  "$@" &
  LOAD_PID=$!
  local rc=0
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=""
  return "$rc"
}

cleanup() {
  local pid
  if [[ -n "$LOAD_PID" ]]; then
    kill -TERM "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
  fi
  for pid in "${LOAD_PIDS[@]+"${LOAD_PIDS[@]}"}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    stop_pid "$pid"
  done
  if [[ "${BENCH_KEEP_LOGS:-0}" == 1 ]]; then
    log "logs kept in $WORKDIR"
  else
    rm -rf "$WORKDIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_wrk() {
  command -v wrk >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" != 0 ]]; then
    log "wrk is not installed and this is not root: install it (apt-get install wrk)"
    exit 1
  fi
  log "installing wrk with apt-get"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >"$WORKDIR/apt.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$WORKDIR/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >>"$WORKDIR/apt.log" 2>&1 || {
      tail -20 "$WORKDIR/apt.log" >&2
      exit 1
    }
  fi
}

build() {
  if [[ "$BENCH_SKIP_BUILD" == 1 ]]; then
    log "BENCH_SKIP_BUILD=1: using existing binaries"
  else
    log "building release binaries: cargo build --release -p llmtrace-node --bins"
    (cd "$ROOT" && cargo build --release -p llmtrace-node --bins)
    if [[ "$MODE" == proxy || "$MODE" == all ]]; then
      log "building the stub upstream: cargo build --release -p llmtrace-integration --bin llmtrace-stub-upstream"
      (cd "$ROOT" && cargo build --release -p llmtrace-integration --bin llmtrace-stub-upstream)
    fi
  fi
  local b
  for b in "$NODE_BIN" "$PLAIN_BIN"; do
    [[ -x "$b" ]] || { log "missing binary $b"; exit 1; }
  done
  NODE_HAS_CLUSTER_LISTEN=0
  if "$NODE_BIN" --help 2>/dev/null | grep -q -- '--cluster-listen'; then
    NODE_HAS_CLUSTER_LISTEN=1
  fi
}

# The figures are only meaningful on an otherwise idle machine (2 cores here):
# sample the CPU for one second and warn if something else is using it.
load_note() {
  local a b
  a="$(awk '/^cpu / { print $2+$3+$4+$6+$7+$8, $5 }' /proc/stat)"
  sleep 1
  b="$(awk '/^cpu / { print $2+$3+$4+$6+$7+$8, $5 }' /proc/stat)"
  awk -v a="$a" -v b="$b" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    busy = y[1] - x[1]; idle = y[2] - x[2]
    if (busy + idle > 0 && busy / (busy + idle) > 0.15)
      printf "  !! the CPU was %.0f%% busy just before the run: other work (a build?) may skew the figures\n", 100 * busy / (busy + idle)
  }'
}

# start_proc NAME BIN ARGS... -> sets PROC_PID, PROC_PUBLIC, PROC_ADMIN, PROC_CLUSTER
start_proc() {
  local name="$1" bin="$2"
  shift 2
  local out="$WORKDIR/$name.out" err="$WORKDIR/$name.err" line="" i
  "$bin" "$@" >"$out" 2>"$err" &
  PROC_PID=$!
  PIDS+=("$PROC_PID")
  for i in $(seq 1 200); do   # up to 20 s
    line="$(grep -m1 ' listening public=' "$out" 2>/dev/null || true)"
    [[ -n "$line" ]] && break
    if ! kill -0 "$PROC_PID" 2>/dev/null; then
      log "$name exited before printing its listening line; stderr tail:"
      tail -20 "$err" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  if [[ -z "$line" ]]; then
    log "$name printed no listening line within 20s; stderr tail:"
    tail -20 "$err" >&2 || true
    exit 1
  fi
  PROC_PUBLIC="$(sed -n 's/.* public=\([^ ]*\).*/\1/p' <<<"$line")"
  PROC_ADMIN="$(sed -n 's/.* admin=\([^ ]*\).*/\1/p' <<<"$line")"
  PROC_CLUSTER="$(sed -n 's/.* cluster=\([^ ]*\).*/\1/p' <<<"$line")"
  log "$name pid=$PROC_PID: $line"
}

# Look at a process's stderr after a run: still alive? panics or errors logged?
health_note() {
  local name="$1" pid="$2" err="$WORKDIR/$1.err" n
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "  !! $name (pid $pid) is no longer running; stderr tail:"
    tail -20 "$err" | sed 's/^/     /'
    return
  fi
  n="$(grep -ciE 'panick|error' "$err" || true)"
  if [[ "$n" -gt 0 ]]; then
    echo "  !! $name logged $n line(s) matching panic/error on stderr; first ones:"
    grep -iE 'panick|error' "$err" | head -5 | cut -c1-300 | sed 's/^/     /'
  fi
}

node_args() {
  NODE_ARGS=(--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0)
  # The node-to-node listener defaults to the fixed port 7946: use an ephemeral
  # one so a bench never collides with another node on this machine.
  [[ "$NODE_HAS_CLUSTER_LISTEN" == 1 ]] && NODE_ARGS+=(--cluster-listen 127.0.0.1:0)
  [[ -n "$BENCH_SHARDS" ]] && NODE_ARGS+=(--shards "$BENCH_SHARDS")
  [[ -n "$BENCH_WORKERS" ]] && NODE_ARGS+=(--http-workers "$BENCH_WORKERS")
  if [[ -n "$BENCH_NODE_ARGS" ]]; then
    local extra
    read -r -a extra <<<"$BENCH_NODE_ARGS"
    NODE_ARGS+=("${extra[@]}")
  fi
  return 0
}

field() { # field FILE KEY -> value of KEY=... on the BENCH_RESULT / DRAIN_RESULT line
  sed -n "s/^[A-Z_]*RESULT .*\b$2=\([^ ]*\).*/\1/p" "$1" | head -1
}

us_to_ms() { awk -v u="$1" 'BEGIN { printf "%.2f ms", u / 1000 }'; }

vmrss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
vmhwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# CPU accounting around a measured run, so a noisy 2-core machine can be told
# apart from a slow server: the server's own CPU (from /proc/PID/stat), the
# client's (children times of this shell: wrk runs as our child) and the whole
# machine's busy time (/proc/stat); "other" is what neither of them used.
proc_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
machine_busy_ticks() { awk '/^cpu / { print $2+$3+$4 }' /proc/stat; }  # user+nice+system (softirq of loopback traffic excluded)
children_cpu_s() { # must not run in a subshell: `times` reports the current shell
  times >"$WORKDIR/times.txt"
  CHILD_CPU="$(awk 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] }
    printf "%.3f", t }' "$WORKDIR/times.txt")"
}

# run_wrk NAME URL PID -> prints the wrk output, leaves it in $WORKDIR/wrk-NAME.txt
# and "server_s client_s busy_s" in $WORKDIR/cpu-NAME.txt
run_wrk() {
  local name="$1" url="$2" pid="$3" out="$WORKDIR/wrk-$1.txt" s0 s1 c0 c1 m0 m1 hz
  if [[ "$BENCH_WARMUP" != 0 && "$BENCH_WARMUP" != 0s ]]; then
    run_load timeout 300 wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_WARMUP" --timeout 5s \
      -s "$BENCH_DIR/check.lua" "$url" >"$WORKDIR/wrk-$name-warmup.txt" 2>&1 || {
        log "wrk warm-up against $name failed:"; cat "$WORKDIR/wrk-$name-warmup.txt" >&2; exit 1; }
  fi
  hz="$(getconf CLK_TCK)"
  children_cpu_s; c0="$CHILD_CPU"
  s0="$(proc_cpu_ticks "$pid")"; m0="$(machine_busy_ticks)"
  run_load timeout 900 wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_DURATION" --timeout 5s --latency \
    -s "$BENCH_DIR/check.lua" "$url" >"$out" 2>&1 || {
      log "wrk against $name failed:"; cat "$out" >&2; exit 1; }
  s1="$(proc_cpu_ticks "$pid")"; m1="$(machine_busy_ticks)"
  children_cpu_s; c1="$CHILD_CPU"
  awk -v s="$((s1 - s0))" -v m="$((m1 - m0))" -v c0="$c0" -v c1="$c1" -v hz="$hz" \
    'BEGIN { printf "%.3f %.3f %.3f\n", s / hz, c1 - c0, m / hz }' >"$WORKDIR/cpu-$name.txt"
  sed 's/^/  | /' "$out"
  grep -q '^BENCH_RESULT ' "$out" || { log "wrk printed no BENCH_RESULT line"; exit 1; }
}

summarize_wrk() { # summarize_wrk NAME  -> sets RPS
  local out="$WORKDIR/wrk-$1.txt" errs
  RPS="$(field "$out" rps)"
  printf '  %-22s %12s checks/s   p50 %s   p99 %s   max %s\n' "$1" "$RPS" \
    "$(us_to_ms "$(field "$out" p50_us)")" "$(us_to_ms "$(field "$out" p99_us)")" \
    "$(us_to_ms "$(field "$out" max_us)")"
  errs="$(field "$out" non2xx)"
  if [[ "$errs" != 0 ]]; then
    echo "  !! $1: $errs non-2xx responses (429 or errors) out of $(field "$out" requests)"
  fi
  errs="connect $(field "$out" connect_err), read $(field "$out" read_err), write $(field "$out" write_err), timeout $(field "$out" timeout_err)"
  if [[ "$errs" != "connect 0, read 0, write 0, timeout 0" ]]; then
    echo "  !! $1: socket errors: $errs"
  fi
  read -r CPU_SERVER CPU_CLIENT CPU_BUSY <"$WORKDIR/cpu-$1.txt"
  awk -v s="$CPU_SERVER" -v c="$CPU_CLIENT" -v b="$CPU_BUSY" -v n="$(field "$out" requests)" \
      -v d="$(field "$out" duration_s)" -v name="$1" 'BEGIN {
    o = b - s - c; if (o < 0) o = 0
    printf "  %-22s server %.1f us CPU/check (%.2f cores), wrk %.2f cores, other processes %.2f cores\n", \
      "", (n > 0) ? 1e6 * s / n : 0, s / d, c / d, o / d
    if (o / d > 0.15)
      printf "  !! %s: other processes used %.2f cores during the run: the figures are skewed\n", name, o / d
  }'
  if grep -q '^BENCH_STATUS' "$out"; then
    echo "  $1 statuses: $(sed -n 's/^BENCH_STATUS //p' "$out")"
  fi
}

bench_single() {
  echo
  echo "== single: POST /v1/check, wrk -t$BENCH_THREADS -c$BENCH_CONNECTIONS -d$BENCH_DURATION," \
       "$BENCH_TENANT_SPACE random tenants, keep-alive =="
  local node_rps plain_rps plain_args=(--listen 127.0.0.1:0)
  [[ -n "$BENCH_WORKERS" ]] && plain_args+=(--workers "$BENCH_WORKERS")

  load_note
  node_args
  NODE_ARGS+=(--requests-per-second "$BENCH_RPS" --burst-size "$BENCH_BURST")
  echo "-- llmtrace-node ${NODE_ARGS[*]}"
  start_proc node-single "$NODE_BIN" "${NODE_ARGS[@]}"
  local node_pid="$PROC_PID" node_url="http://$PROC_PUBLIC"
  run_wrk node "$node_url" "$node_pid"
  # Which path did the checks take? Restores mean buckets were not resident.
  timeout 60 python3 "$BENCH_DIR/drain.py" --metrics "$PROC_ADMIN" \
    --metric llmtrace_checks_total --metric llmtrace_restore_hits_total \
    --metric llmtrace_restore_misses_total --metric llmtrace_bucket_evictions_total \
    --metric llmtrace_buckets_resident --metric llmtrace_snapshot_writes_total \
    | sed 's/^METRIC /  metric /' || echo "  !! could not read $PROC_ADMIN/metrics"
  health_note node-single "$node_pid"
  stop_pid "$node_pid"

  echo "-- llmtrace-plain-bench ${plain_args[*]}"
  start_proc plain "$PLAIN_BIN" "${plain_args[@]}"
  local plain_pid="$PROC_PID"
  run_wrk plain "http://$PROC_PUBLIC" "$plain_pid"
  health_note plain "$plain_pid"
  stop_pid "$plain_pid"

  echo
  echo "single results:"
  summarize_wrk node; node_rps="$RPS"
  summarize_wrk plain; plain_rps="$RPS"
  NODE_US="$(awk -v s="$(cut -d' ' -f1 "$WORKDIR/cpu-node.txt")" -v n="$(field "$WORKDIR/wrk-node.txt" requests)" 'BEGIN { print (n > 0) ? 1e6 * s / n : 0 }')"
  PLAIN_US="$(awk -v s="$(cut -d' ' -f1 "$WORKDIR/cpu-plain.txt")" -v n="$(field "$WORKDIR/wrk-plain.txt" requests)" 'BEGIN { print (n > 0) ? 1e6 * s / n : 0 }')"
  awk -v n="$node_rps" -v p="$plain_rps" 'BEGIN {
    r = (p > 0) ? n / p : 0
    printf "  ratio node/plain       %12.3f            (target >= 0.70: %s)\n", r, (r >= 0.7) ? "met" : "NOT met"
  }'
  awk -v n="$NODE_US" -v p="$PLAIN_US" 'BEGIN {
    if (n > 0) printf "  server CPU plain/node  %12.3f            (same ratio measured in server CPU per check; less sensitive to noise)\n", p / n
  }'
}

bench_memory() {
  echo
  echo "== memory: $BENCH_TENANTS distinct tenants drained via /v1/check/batch (1000 per request) =="
  load_note
  node_args
  NODE_ARGS+=(--requests-per-second 1 --burst-size 1000)
  echo "-- llmtrace-node ${NODE_ARGS[*]}"
  start_proc node-memory "$NODE_BIN" "${NODE_ARGS[@]}"
  local pid="$PROC_PID" addr="$PROC_PUBLIC" admin="$PROC_ADMIN" idle after hwm out="$WORKDIR/drain.txt"

  # Warm-up: one batch of 1000 other tenants, so buffers, thread stacks and
  # allocator arenas are in the baseline.
  run_load timeout 120 python3 "$BENCH_DIR/drain.py" --addr "$addr" --tenants 1000 --prefix warm- \
    --cost 1000 --threads 1 --deadline 60 >"$WORKDIR/warmup.txt" || {
      log "warm-up batch failed"; health_note node-memory "$pid"; exit 1; }
  sleep 1
  idle="$(vmrss_kb "$pid")"
  echo "  idle VmRSS after warm-up batch: $idle kB"

  run_load timeout $((BENCH_DRAIN_DEADLINE + 120)) python3 "$BENCH_DIR/drain.py" --addr "$addr" \
    --tenants "$BENCH_TENANTS" --batch 1000 --cost 1000 --prefix t \
    --threads "$BENCH_DRAIN_THREADS" --deadline "$BENCH_DRAIN_DEADLINE" >"$out" || {
      log "drain failed"; health_note node-memory "$pid"; exit 1; }
  sleep 1
  after="$(vmrss_kb "$pid")"
  hwm="$(vmhwm_kb "$pid")"
  sed 's/^/  | /' "$out"
  echo "  VmRSS after drain: $after kB (VmHWM $hwm kB)"
  if [[ -n "$admin" ]]; then
    timeout 60 python3 "$BENCH_DIR/drain.py" --metrics "$admin" --metric llmtrace_buckets_resident \
      | sed "s/^METRIC \(.*\)/  metric \1   (expected >= $((BENCH_TENANTS + 1000)): drained + warm-up tenants)/" \
      || echo "  !! could not read $admin/metrics"
  else
    echo "  (no admin address in the node's listening line: no metrics)"
  fi
  health_note node-memory "$pid"
  stop_pid "$pid"

  echo
  echo "memory results:"
  awk -v i="$idle" -v a="$after" -v n="$BENCH_TENANTS" -v d="$(field "$out" checks_per_s)" \
      -v al="$(field "$out" allowed)" -v de="$(field "$out" denied)" 'BEGIN {
    b = (a - i) * 1024 / n
    printf "  drained                %12d tenants at %s checks/s (allowed %s, denied %s)\n", n, d, al, de
    printf "  RSS idle -> after      %9.1f MiB -> %.1f MiB\n", i / 1024, a / 1024
    printf "  bytes per tenant       %12.1f            (target <= 150: %s)\n", b, (b <= 150) ? "met" : "NOT met"
  }'
}

# wrk_parallel TAG DURATION LATENCY(0|1) URL... -> one `wrk -t1` per URL, all at
# once, the BENCH_CONNECTIONS connections split over them (64 over 3: 22+21+21);
# outputs in $WORKDIR/wrk-TAG-<i>.txt. Every wrk is bounded by -d and `timeout`;
# cleanup stops them (LOAD_PIDS) if this script is interrupted.
wrk_parallel() {
  local tag="$1" dur="$2" lat="$3"
  shift 3
  local n=$# i=0 c url rc=0 args
  LOAD_PIDS=()
  for url in "$@"; do
    c=$((BENCH_CONNECTIONS / n + (i < BENCH_CONNECTIONS % n ? 1 : 0)))
    args=(-t1 -c"$c" -d"$dur" --timeout 5s)
    [[ "$lat" == 1 ]] && args+=(--latency)
    timeout 900 wrk "${args[@]}" -s "$BENCH_DIR/check.lua" "$url" >"$WORKDIR/wrk-$tag-$i.txt" 2>&1 &
    LOAD_PIDS+=("$!")
    i=$((i + 1))
  done
  for i in "${!LOAD_PIDS[@]}"; do
    wait "${LOAD_PIDS[$i]}" || {
      rc=$?
      log "wrk $tag #$i failed (exit $rc):"; cat "$WORKDIR/wrk-$tag-$i.txt" >&2; }
  done
  LOAD_PIDS=()
  return "$rc"
}

split_connections() { # -> "22+21+21" for 3 wrk processes
  local n="$1" i out=""
  for ((i = 0; i < n; i++)); do
    out+="${out:++}$((BENCH_CONNECTIONS / n + (i < BENCH_CONNECTIONS % n ? 1 : 0)))"
  done
  echo "$out"
}

# run_wrk_multi NAME "PID..." URL... -> warm-up, then the measured wrk_parallel
# run (with WRK_BEFORE_MEASURE, if set, run in between: it reads the metrics);
# prints every wrk output and leaves "server_s client_s busy_s" in
# $WORKDIR/cpu-NAME.txt, server_s summed over the PIDs.
WRK_BEFORE_MEASURE=""
run_wrk_multi() {
  local name="$1" pids="$2" s0=0 s1=0 c0 c1 m0 m1 hz pid i
  shift 2
  if [[ "$BENCH_WARMUP" != 0 && "$BENCH_WARMUP" != 0s ]]; then
    wrk_parallel "$name-warmup" "$BENCH_WARMUP" 0 "$@" || { log "wrk warm-up against $name failed"; exit 1; }
  fi
  [[ -z "$WRK_BEFORE_MEASURE" ]] || $WRK_BEFORE_MEASURE
  hz="$(getconf CLK_TCK)"
  children_cpu_s; c0="$CHILD_CPU"
  for pid in $pids; do s0=$((s0 + $(proc_cpu_ticks "$pid"))); done
  m0="$(machine_busy_ticks)"
  wrk_parallel "$name" "$BENCH_DURATION" 1 "$@" || { log "wrk against $name failed"; exit 1; }
  for pid in $pids; do s1=$((s1 + $(proc_cpu_ticks "$pid"))); done
  m1="$(machine_busy_ticks)"
  children_cpu_s; c1="$CHILD_CPU"
  awk -v s="$((s1 - s0))" -v m="$((m1 - m0))" -v c0="$c0" -v c1="$c1" -v hz="$hz" \
    'BEGIN { printf "%.3f %.3f %.3f\n", s / hz, c1 - c0, m / hz }' >"$WORKDIR/cpu-$name.txt"
  for ((i = 0; i < $#; i++)); do
    sed "s/^/  | [wrk $i] /" "$WORKDIR/wrk-$name-$i.txt"
    grep -q '^BENCH_RESULT ' "$WORKDIR/wrk-$name-$i.txt" || { log "wrk $i printed no BENCH_RESULT line"; exit 1; }
  done
}

# summarize_multi NAME LABEL... (one label per wrk) -> per-wrk lines, the total,
# errors and CPU; sets RPS (sum of the wrk), P99_US (worst wrk p99), US_PER_CHECK
summarize_multi() {
  local name="$1" i=0 out errs label requests=0 dur=0
  shift
  RPS=0; P99_US=0
  for label in "$@"; do
    out="$WORKDIR/wrk-$name-$i.txt"
    printf '    %-20s %12s checks/s   p50 %s   p99 %s   max %s\n' "$label" "$(field "$out" rps)" \
      "$(us_to_ms "$(field "$out" p50_us)")" "$(us_to_ms "$(field "$out" p99_us)")" \
      "$(us_to_ms "$(field "$out" max_us)")"
    errs="$(field "$out" non2xx)"
    [[ "$errs" == 0 ]] || echo "  !! $name $label: $errs non-2xx responses (429 or errors) out of $(field "$out" requests)"
    errs="connect $(field "$out" connect_err), read $(field "$out" read_err), write $(field "$out" write_err), timeout $(field "$out" timeout_err)"
    [[ "$errs" == "connect 0, read 0, write 0, timeout 0" ]] || echo "  !! $name $label: socket errors: $errs"
    grep -q '^BENCH_STATUS' "$out" && echo "    $label statuses: $(sed -n 's/^BENCH_STATUS //p' "$out")"
    RPS="$(awk -v a="$RPS" -v b="$(field "$out" rps)" 'BEGIN { printf "%.1f", a + b }')"
    P99_US="$(awk -v a="$P99_US" -v b="$(field "$out" p99_us)" 'BEGIN { print (b > a) ? b : a }')"
    requests=$((requests + $(field "$out" requests)))
    dur="$(field "$out" duration_s)"
    i=$((i + 1))
  done
  read -r CPU_SERVER CPU_CLIENT CPU_BUSY <"$WORKDIR/cpu-$name.txt"
  US_PER_CHECK="$(awk -v s="$CPU_SERVER" -v n="$requests" 'BEGIN { print (n > 0) ? 1e6 * s / n : 0 }')"
  awk -v s="$CPU_SERVER" -v c="$CPU_CLIENT" -v b="$CPU_BUSY" -v n="$requests" -v d="$dur" \
      -v name="$name" -v rps="$RPS" -v p99="$P99_US" 'BEGIN {
    o = b - s - c; if (o < 0) o = 0
    printf "    %-20s %12.1f checks/s   worst p99 %.2f ms   (%d checks)\n", "total", rps, p99 / 1000, n
    printf "    %-20s server %.1f us CPU/check (%.2f cores), wrk %.2f cores, other processes %.2f cores\n", \
      "", (n > 0) ? 1e6 * s / n : 0, s / d, c / d, o / d
    if (o / d > 0.15)
      printf "  !! %s: other processes used %.2f cores during the run: the figures are skewed\n", name, o / d
  }'
}

# A node's stderr warnings (besides health_note's panics/errors), ANSI colours stripped.
warn_note() {
  local name="$1" err="$WORKDIR/$1.err" n
  n="$(grep -c ' WARN' "$err" || true)"
  if [[ "$n" -gt 0 ]]; then
    echo "  !! $name logged $n warning(s) on stderr; first ones:"
    grep ' WARN' "$err" | sed 's/\x1b\[[0-9;]*m//g' | head -5 | cut -c1-300 | sed 's/^/     /'
  fi
}

# wait_converged TIMEOUT_S --node ID=PUBLIC=ADMIN ... -> bounded; exits on failure
wait_converged() {
  local t="$1" out="$WORKDIR/converge.txt"
  shift
  if ! run_load timeout $((t + 30)) python3 "$BENCH_DIR/cluster.py" wait --timeout "$t" "$@" >"$out" 2>&1; then
    cat "$out" >&2
    log "the nodes did not converge within ${t}s"
    exit 1
  fi
  sed 's/^/  /' "$out"
}

# cluster_snapshot TAG -> every node's admin /metrics in $WORKDIR/metrics-TAG.json
CLUSTER_SPECS=()
cluster_snapshot() {
  timeout 60 python3 "$BENCH_DIR/cluster.py" snapshot --out "$WORKDIR/metrics-$1.json" "${CLUSTER_SPECS[@]}" || {
    log "could not read the nodes' /metrics"; exit 1; }
}

bench_cluster() {
  [[ "$NODE_HAS_CLUSTER_LISTEN" == 1 ]] || { log "llmtrace-node has no --cluster-listen: no cluster benchmark"; exit 1; }
  ((BENCH_CONNECTIONS >= 3)) || { log "the cluster benchmark needs BENCH_CONNECTIONS >= 3"; exit 1; }
  local conns extra=() i pid rev=() seed="" pids="" urls=() specs=() labels=() single_rps single_us single_p99
  conns="$(split_connections 3)"
  [[ -n "$BENCH_CLUSTER_ARGS" ]] && read -r -a extra <<<"$BENCH_CLUSTER_ARGS"
  echo
  echo "== cluster: POST /v1/check, 3 x wrk -t1 -c$conns -d$BENCH_DURATION in parallel," \
       "$BENCH_TENANT_SPACE random tenants, keep-alive; 1 node, then 3 nodes =="
  load_note

  node_args
  NODE_ARGS+=(--node-id single --requests-per-second "$BENCH_RPS" --burst-size "$BENCH_BURST")
  echo "-- reference, all 3 wrk against one node: llmtrace-node ${NODE_ARGS[*]}"
  start_proc cluster-single "$NODE_BIN" "${NODE_ARGS[@]}"
  local ref_pid="$PROC_PID" ref_url="http://$PROC_PUBLIC"
  wait_converged "$BENCH_CLUSTER_WAIT" --node "single=$PROC_PUBLIC=$PROC_ADMIN"
  run_wrk_multi ref "$ref_pid" "$ref_url" "$ref_url" "$ref_url"
  health_note cluster-single "$ref_pid"
  warn_note cluster-single
  stop_pid "$ref_pid"

  for i in 0 1 2; do
    node_args
    NODE_ARGS+=(--node-id "node-$i" --requests-per-second "$BENCH_RPS" --burst-size "$BENCH_BURST")
    [[ -n "$seed" ]] && NODE_ARGS+=(--seeds "$seed")
    NODE_ARGS+=(${extra[@]+"${extra[@]}"})
    echo "-- node-$i: llmtrace-node ${NODE_ARGS[*]}"
    start_proc "node-$i" "$NODE_BIN" "${NODE_ARGS[@]}"
    [[ -n "$seed" ]] || seed="$PROC_CLUSTER"
    pids+="${pids:+ }$PROC_PID"
    urls+=("http://$PROC_PUBLIC")
    specs+=(--node "node-$i=$PROC_PUBLIC=$PROC_ADMIN")
    labels+=("wrk -> node-$i")
  done
  wait_converged "$BENCH_CLUSTER_WAIT" "${specs[@]}"
  # For 10 s after a ring change a node asks a key's previous owner on the
  # key's first check (ownership handoff): one extra round trip per moved key.
  # The measured run starts after that window unless BENCH_CLUSTER_SETTLE says
  # otherwise (0 measures a cluster that has just formed).
  if [[ "$BENCH_CLUSTER_SETTLE" != 0 ]]; then
    log "letting the handoff window pass: ${BENCH_CLUSTER_SETTLE}s"
    sleep "$BENCH_CLUSTER_SETTLE"
  fi
  # Metrics are read right before and right after the measured run (not the warm-up).
  CLUSTER_SPECS=("${specs[@]}")
  WRK_BEFORE_MEASURE="cluster_snapshot before"
  run_wrk_multi cluster "$pids" "${urls[@]}"
  WRK_BEFORE_MEASURE=""
  cluster_snapshot after
  i=0
  for pid in $pids; do
    health_note "node-$i" "$pid"
    warn_note "node-$i"
    i=$((i + 1))
  done
  read -r -a rev <<<"$pids"
  for ((i = ${#rev[@]} - 1; i >= 0; i--)); do stop_pid "${rev[$i]}"; done

  echo
  echo "cluster results:"
  echo "  1 node, 3 wrk:"
  summarize_multi ref "wrk -> single" "wrk -> single" "wrk -> single"
  single_rps="$RPS"; single_us="$US_PER_CHECK"; single_p99="$P99_US"
  echo "  3 nodes, 1 wrk each:"
  summarize_multi cluster "${labels[@]}"
  awk -v c="$RPS" -v s="$single_rps" -v cu="$US_PER_CHECK" -v su="$single_us" \
      -v cp="$P99_US" -v sp="$single_p99" 'BEGIN {
    r = (s > 0) ? c / s : 0
    printf "  ratio cluster/single   %12.3f            (%.1f / %.1f checks/s; target >= 0.60: %s)\n", r, c, s, (r >= 0.6) ? "met" : "NOT met"
    if (cu > 0) printf "  server CPU single/cluster %9.3f            (%.1f vs %.1f us CPU per check, the 3 nodes summed)\n", su / cu, su, cu
    printf "  client p99 worst       %9.2f ms          (single %.2f ms; mixes local and forwarded checks)\n", cp / 1000, sp / 1000
  }'
  timeout 60 python3 "$BENCH_DIR/cluster.py" report --before "$WORKDIR/metrics-before.json" \
    --after "$WORKDIR/metrics-after.json" || echo "  !! could not compute the cluster metrics"
}

# ---------------------------------------------------------------- redis

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" != 0 ]]; then
    log "redis-server is not installed and this is not root: install it (apt-get install redis-server)"
    exit 1
  fi
  log "installing redis-server with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >"$WORKDIR/apt-redis.log" 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$WORKDIR/apt-redis.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >>"$WORKDIR/apt-redis.log" 2>&1 || {
      tail -20 "$WORKDIR/apt-redis.log" >&2; exit 1; }
  }
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_redis -> REDIS_PORT, REDIS_PID (no persistence, loopback only)
start_redis() {
  local i
  REDIS_PORT="$(free_port)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$WORKDIR" >"$WORKDIR/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for i in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "redis-server did not answer PING on port $REDIS_PORT"; tail -20 "$WORKDIR/redis.log" >&2; exit 1
}

redis_calls() { # redis_calls CMD -> calls of CMD so far (INFO commandstats)
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' \
    | sed -n "s/^cmdstat_$1:calls=\([0-9]*\),.*/\1/p" | head -1 | sed 's/^$/0/'
}

# redis_level NAME CONNS INTERVAL -> one wrk run of the hot tenants at CONNS
# connections pausing BENCH_REDIS_DELAY_MS; appends "name conns checks/s set/s get/s"
# to $WORKDIR/redis-levels.txt
redis_level() {
  local name="$1" conns="$2" out="$WORKDIR/wrk-$1.txt" set0 set1 get0 get1 t0 t1
  BENCH_DELAY_MS="$BENCH_REDIS_DELAY_MS" run_load timeout 300 wrk -t2 -c"$conns" -d"$BENCH_WARMUP" --timeout 5s \
    -s "$BENCH_DIR/check.lua" "$NODE_URL" >"$WORKDIR/wrk-$name-warmup.txt" 2>&1 || {
      log "wrk warm-up $name failed"; cat "$WORKDIR/wrk-$name-warmup.txt" >&2; exit 1; }
  set0="$(redis_calls set)"; get0="$(redis_calls get)"; t0="$(date +%s.%N)"
  BENCH_DELAY_MS="$BENCH_REDIS_DELAY_MS" run_load timeout 900 wrk -t2 -c"$conns" -d"$BENCH_DURATION" --timeout 5s \
    --latency -s "$BENCH_DIR/check.lua" "$NODE_URL" >"$out" 2>&1 || {
      log "wrk $name failed"; cat "$out" >&2; exit 1; }
  set1="$(redis_calls set)"; get1="$(redis_calls get)"; t1="$(date +%s.%N)"
  grep -q '^BENCH_RESULT ' "$out" || { log "wrk printed no BENCH_RESULT line"; cat "$out" >&2; exit 1; }
  [[ "$(field "$out" non2xx)" == 0 ]] || echo "  !! $name: $(field "$out" non2xx) non-2xx responses"
  awk -v n="$name" -v c="$conns" -v r="$(field "$out" rps)" -v s=$((set1 - set0)) -v g=$((get1 - get0)) \
      -v t0="$t0" -v t1="$t1" -v p99="$(field "$out" p99_us)" 'BEGIN {
    d = t1 - t0; printf "%s %d %.1f %.1f %.1f %.2f\n", n, c, r, s / d, g / d, p99 / 1000 }' >>"$WORKDIR/redis-levels.txt"
}

bench_redis() {
  local interval pid lvl wb_rps wt_rps
  echo
  echo "== redis: write-behind traffic over $BENCH_HOT_TENANTS hot tenants at two load levels;" \
       "write-through cost =="
  ensure_redis
  start_redis
  echo "-- redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID, no persistence)"
  export BENCH_TENANT_SPACE="$BENCH_HOT_TENANTS"
  : >"$WORKDIR/redis-levels.txt"
  load_note
  for interval in $BENCH_REDIS_INTERVALS; do
    node_args
    NODE_ARGS+=(--node-id "redis-$interval" --requests-per-second "$BENCH_RPS" --burst-size "$BENCH_BURST"
      --redis-url "redis://127.0.0.1:$REDIS_PORT" --snapshot-interval-ms "$interval")
    echo "-- llmtrace-node ${NODE_ARGS[*]}"
    start_proc "node-redis-$interval" "$NODE_BIN" "${NODE_ARGS[@]}"
    pid="$PROC_PID"; NODE_URL="http://$PROC_PUBLIC"
    redis_level "wb-$interval-x1" "$BENCH_REDIS_CONNS"
    redis_level "wb-$interval-x2" $((2 * BENCH_REDIS_CONNS))
    health_note "node-redis-$interval" "$pid"
    stop_pid "$pid"
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
  done
  for mode in write-behind write-through; do
    node_args
    NODE_ARGS+=(--node-id "$mode" --requests-per-second "$BENCH_RPS" --burst-size "$BENCH_BURST"
      --redis-url "redis://127.0.0.1:$REDIS_PORT" --snapshot-mode "$mode")
    echo "-- llmtrace-node ${NODE_ARGS[*]}"
    start_proc "node-$mode" "$NODE_BIN" "${NODE_ARGS[@]}"
    pid="$PROC_PID"; NODE_URL="http://$PROC_PUBLIC"
    local set0 set1 t0 t1
    set0="$(redis_calls set)"; t0="$(date +%s.%N)"
    run_wrk "$mode" "$NODE_URL" "$pid"
    set1="$(redis_calls set)"; t1="$(date +%s.%N)"
    awk -v s=$((set1 - set0)) -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.1f\n", s / (t1 - t0) }' \
      >"$WORKDIR/sets-$mode.txt"
    health_note "node-$mode" "$pid"
    stop_pid "$pid"
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
  done

  echo
  echo "redis results ($BENCH_HOT_TENANTS hot tenants, every check allowed and changing its bucket):"
  awk -v tenants="$BENCH_HOT_TENANTS" '
    { split($1, p, "-"); iv = p[2]; lvl = p[3]
      printf "  interval %5d ms, %-3s %3d conns: %10.1f checks/s  %9.1f SET/s  %7.1f GET/s  p99 %.2f ms  (bound min(checks/s, %d x 1000/%d) = %.0f SET/s)\n", \
        iv, lvl, $2, $3, $4, $5, $6, tenants, iv, ($3 < tenants * 1000 / iv) ? $3 : tenants * 1000 / iv
      if ($4 > ((($3 < tenants * 1000 / iv) ? $3 : tenants * 1000 / iv) * 1.02))
        printf "  !! interval %d ms %s: %.1f SET/s is above the write-behind bound\n", iv, lvl, $4
      rate[iv, lvl] = $3; sets[iv, lvl] = $4; ivs[iv] = 1 }
    END { for (iv in ivs) if (rate[iv, "x1"] > 0 && sets[iv, "x1"] > 0)
      printf "  interval %5d ms: x2 / x1 checks/s %.2f, SET/s %.2f\n", iv, rate[iv, "x2"] / rate[iv, "x1"], sets[iv, "x2"] / sets[iv, "x1"] }
  ' "$WORKDIR/redis-levels.txt"
  summarize_wrk write-behind; wb_rps="$RPS"
  echo "  write-behind           $(cat "$WORKDIR/sets-write-behind.txt") SET/s"
  summarize_wrk write-through; wt_rps="$RPS"
  echo "  write-through          $(cat "$WORKDIR/sets-write-through.txt") SET/s"
  awk -v a="$wt_rps" -v b="$wb_rps" 'BEGIN {
    if (b > 0) printf "  ratio write-through / write-behind   %.3f (checks/s)\n", a / b }'
}

# ---------------------------------------------------------------- failover

bench_failover() {
  [[ "$NODE_HAS_CLUSTER_LISTEN" == 1 ]] || { log "llmtrace-node has no --cluster-listen"; exit 1; }
  local run i seed pids specs survivors victim_pid victim_admin
  echo
  echo "== failover: 3 nodes + Redis, default settings; kill -9 of node-2; time until every" \
       "tenant it owned is decided normally by both survivors =="
  ensure_redis
  : >"$WORKDIR/failover.txt"
  for run in $(seq 1 "$BENCH_FAILOVER_RUNS"); do
    start_redis
    seed=""; pids=(); specs=(); survivors=()
    for i in 0 1 2; do
      node_args
      NODE_ARGS+=(--node-id "node-$i" --redis-url "redis://127.0.0.1:$REDIS_PORT")
      [[ -n "$seed" ]] && NODE_ARGS+=(--seeds "$seed")
      start_proc "failover-$run-node-$i" "$NODE_BIN" "${NODE_ARGS[@]}"
      [[ -n "$seed" ]] || seed="$PROC_CLUSTER"
      pids+=("$PROC_PID")
      specs+=(--node "node-$i=$PROC_PUBLIC=$PROC_ADMIN")
      if [[ "$i" == 2 ]]; then
        victim_pid="$PROC_PID"; victim_admin="$PROC_ADMIN"
      else
        survivors+=(--node "node-$i=$PROC_PUBLIC=$PROC_ADMIN")
      fi
    done
    wait_converged "$BENCH_CLUSTER_WAIT" "${specs[@]}"
    echo "-- run $run: kill -9 node-2 (pid $victim_pid)"
    run_load timeout 120 python3 "$BENCH_DIR/failover.py" --victim node-2 --victim-pid "$victim_pid" \
      --victim-admin "$victim_admin" --tenants "$BENCH_FAILOVER_TENANTS" --deadline 60 \
      "${survivors[@]}" | tee -a "$WORKDIR/failover.txt" || echo "  !! run $run failed"
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    stop_pid "$REDIS_PID"
  done
  echo
  echo "failover results:"
  awk '/^FAILOVER_RESULT/ { n++; sub(/^FAILOVER_RESULT /, ""); printf "  run %d: %s\n", n, $0 }' "$WORKDIR/failover.txt"
  awk '/^FAILOVER_RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "seconds") { n++; s = kv[2]; if (s > m) m = s } } }
    END { if (n > 0) printf "  worst of %d runs: %.2f s from kill -9 to every tenant served again (target <= 5 s: %s)\n", n, m, (m <= 5) ? "met" : "NOT met" }' \
    "$WORKDIR/failover.txt"
}

[[ "$MODE" == memory || "$MODE" == failover ]] || ensure_wrk
# One wrk run of proxy.lua: run_proxy_wrk NAME URL
run_proxy_wrk() {
  local name="$1" url="$2" out="$WORKDIR/wrk-$1.txt"
  if [[ "$BENCH_WARMUP" != 0 && "$BENCH_WARMUP" != 0s ]]; then
    BENCH_DELAY_MS="$BENCH_PROXY_DELAY_MS" run_load timeout 300 wrk -t1 -c"$BENCH_PROXY_CONNECTIONS" -d"$BENCH_WARMUP" --timeout 5s \
      -s "$BENCH_DIR/proxy.lua" "$url" >"$WORKDIR/wrk-$name-warmup.txt" 2>&1 || {
        log "wrk warm-up against $name failed:"; cat "$WORKDIR/wrk-$name-warmup.txt" >&2; exit 1; }
  fi
  BENCH_DELAY_MS="$BENCH_PROXY_DELAY_MS" run_load timeout 900 wrk -t1 -c"$BENCH_PROXY_CONNECTIONS" -d"$BENCH_DURATION" --timeout 5s --latency \
    -s "$BENCH_DIR/proxy.lua" "$url" >"$out" 2>&1 || {
      log "wrk against $name failed:"; cat "$out" >&2; exit 1; }
  sed 's/^/  | /' "$out"
  grep -q '^BENCH_RESULT ' "$out" || { log "wrk printed no BENCH_RESULT line"; exit 1; }
}

bench_proxy() {
  echo
  echo "== proxy: POST /v1/chat/completions, wrk -t1 -c$BENCH_PROXY_CONNECTIONS -d$BENCH_DURATION," \
       "$BENCH_TENANT_SPACE bearer keys, keep-alive, direct to the stub vs through the proxy =="
  [[ -x "$STUB_BIN" ]] || { log "missing binary $STUB_BIN"; exit 1; }
  load_note
  start_proc stub "$STUB_BIN"
  local stub_pid="$PROC_PID" stub_addr="$PROC_PUBLIC"
  node_args
  NODE_ARGS+=(--requests-per-second 1000000 --burst-size 1000000000
              --tokens-per-minute 4000000000 --token-burst-size 100000000
              --proxy-listen 127.0.0.1:0 --proxy-upstream "http://$stub_addr")
  echo "-- llmtrace-node ${NODE_ARGS[*]}"
  start_proc node-proxy "$NODE_BIN" "${NODE_ARGS[@]}"
  local node_pid="$PROC_PID" line proxy_addr
  line="$(grep -m1 ' listening public=' "$WORKDIR/node-proxy.out")"
  proxy_addr="$(sed -n 's/.* proxy=\([^ ]*\).*/\1/p' <<<"$line")"
  [[ -n "$proxy_addr" ]] || { log "the node printed no proxy= address: $line"; exit 1; }
  echo "-- direct: http://$stub_addr"
  run_proxy_wrk direct "http://$stub_addr"
  echo "-- proxied: http://$proxy_addr"
  run_proxy_wrk proxied "http://$proxy_addr"
  timeout 60 python3 "$BENCH_DIR/drain.py" --metrics "$PROC_ADMIN" \
    --metric llmtrace_proxy_requests_total --metric llmtrace_proxy_tokens_total \
    | sed 's/^METRIC /  metric /' || echo "  !! could not read $PROC_ADMIN/metrics"
  health_note node-proxy "$node_pid"
  stop_pid "$node_pid"
  stop_pid "$stub_pid"
  echo
  echo "proxy results:"
  local d50 d99 p50 p99 rps non2xx
  d50="$(field "$WORKDIR/wrk-direct.txt" p50_us)"; d99="$(field "$WORKDIR/wrk-direct.txt" p99_us)"
  p50="$(field "$WORKDIR/wrk-proxied.txt" p50_us)"; p99="$(field "$WORKDIR/wrk-proxied.txt" p99_us)"
  rps="$(field "$WORKDIR/wrk-proxied.txt" rps)"; non2xx="$(field "$WORKDIR/wrk-proxied.txt" non2xx)"
  echo "  direct   p50 $(us_to_ms "$d50")  p99 $(us_to_ms "$d99")  $(field "$WORKDIR/wrk-direct.txt" rps) req/s"
  echo "  proxied  p50 $(us_to_ms "$p50")  p99 $(us_to_ms "$p99")  $rps req/s  (non-2xx: $non2xx)"
  awk -v a="$p50" -v b="$d50" -v c="$p99" -v d="$d99" 'BEGIN {
    printf "  added    p50 %.2f ms  p99 %.2f ms  (target <= 1 ms added p99: %s)\n",
      (a - b) / 1000, (c - d) / 1000, ((c - d) <= 1000) ? "met" : "NOT met"
  }'
}

command -v python3 >/dev/null 2>&1 || { log "python3 is required"; exit 1; }
build
case "$MODE" in
  single) bench_single ;;
  memory) bench_memory ;;
  cluster) bench_cluster ;;
  redis) bench_redis ;;
  failover) bench_failover ;;
  proxy) bench_proxy ;;
  all) bench_single; bench_cluster; bench_redis; bench_failover; bench_memory; bench_proxy ;;
esac
