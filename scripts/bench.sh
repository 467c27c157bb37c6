#!/usr/bin/env bash
# Benchmarks for the llmtrace cluster node.
#
#   scripts/bench.sh [single|memory|all]     (default: all)
#
# single  wrk (scripts/bench/check.lua) posts /v1/check with random tenants out of
#         100,000 over keep-alive connections, first against llmtrace-node, then
#         against llmtrace-plain-bench (a bare actix-web server that parses the same
#         body and answers a constant: the ceiling). Prints checks/s, p50, p99 and
#         the ratio node/plain (target >= 0.7). The node runs in memory with
#         --requests-per-second 1000000 --burst-size 1000000, so every check is
#         allowed (a 429 there would mean a bug, and wrk counts it as non-2xx).
# memory  starts a node in memory with --requests-per-second 1 --burst-size 1000,
#         sends one warm-up batch, reads VmRSS (idle baseline), drains
#         1,000,000 distinct tenants (one check of cost 1000 each, so every bucket
#         ends empty and must stay resident) through /v1/check/batch, 1000 items a
#         request (scripts/bench/drain.py), reads VmRSS again and prints
#         (after - idle) / tenants bytes per tenant (target <= 150), plus
#         llmtrace_buckets_resident from the admin /metrics.
#
# Environment:
#   BENCH_DURATION=10s     wrk measuring time (wrk syntax: 10, 10s, 1m)
#   BENCH_WARMUP=2s        wrk warm-up run before each measurement (0 = none)
#   BENCH_CONNECTIONS=64   wrk connections
#   BENCH_THREADS=2        wrk threads
#   BENCH_TENANT_SPACE=100000  distinct tenant ids in the single benchmark
#   BENCH_STATUS=0         1 = count wrk responses per HTTP status (costs client CPU)
#   BENCH_SHARDS=          passed as --shards to the node when set
#   BENCH_WORKERS=         passed as --http-workers to the node and --workers to
#                          plain-bench when set (defaults of each binary otherwise)
#   BENCH_NODE_ARGS=       extra node arguments (word-split), e.g. "--redis-url redis://127.0.0.1:6379"
#   BENCH_TENANTS=1000000  tenants drained in the memory benchmark
#   BENCH_DRAIN_THREADS=2  Python threads (keep-alive connections) for the drain
#   BENCH_DRAIN_DEADLINE=900  seconds the drain may take in all
#   BENCH_SKIP_BUILD=0     1 = use the binaries already in target/release
#
# Only 127.0.0.1 is used: both servers bind ephemeral ports there. Every load run
# is bounded (wrk by -d and `timeout`, the drain by its tenant count and deadline).
# Started processes are stopped on exit.

set -euo pipefail

MODE="${1:-all}"
case "$MODE" in
  single|memory|all) ;;
  -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
  *) echo "usage: $0 [single|memory|all]" >&2; exit 2 ;;
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
BENCH_SHARDS="${BENCH_SHARDS:-}"
BENCH_WORKERS="${BENCH_WORKERS:-}"
BENCH_NODE_ARGS="${BENCH_NODE_ARGS:-}"
BENCH_TENANTS="${BENCH_TENANTS:-1000000}"
BENCH_DRAIN_THREADS="${BENCH_DRAIN_THREADS:-2}"
BENCH_DRAIN_DEADLINE="${BENCH_DRAIN_DEADLINE:-900}"
BENCH_SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
export BENCH_TENANT_SPACE BENCH_STATUS

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

cleanup() {
  local pid
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
  fi
  local b
  for b in "$NODE_BIN" "$PLAIN_BIN"; do
    [[ -x "$b" ]] || { log "missing binary $b"; exit 1; }
  done
}

# start_proc NAME BIN ARGS... -> sets PROC_PID, PROC_PUBLIC, PROC_ADMIN
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

# run_wrk NAME URL -> prints the wrk output, leaves it in $WORKDIR/wrk-NAME.txt
run_wrk() {
  local name="$1" url="$2" out="$WORKDIR/wrk-$1.txt"
  if [[ "$BENCH_WARMUP" != 0 && "$BENCH_WARMUP" != 0s ]]; then
    timeout 300 wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_WARMUP" --timeout 5s \
      -s "$BENCH_DIR/check.lua" "$url" >"$WORKDIR/wrk-$name-warmup.txt" 2>&1 || {
        log "wrk warm-up against $name failed:"; cat "$WORKDIR/wrk-$name-warmup.txt" >&2; exit 1; }
  fi
  timeout 900 wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_DURATION" --timeout 5s --latency \
    -s "$BENCH_DIR/check.lua" "$url" >"$out" 2>&1 || {
      log "wrk against $name failed:"; cat "$out" >&2; exit 1; }
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

  node_args
  NODE_ARGS+=(--requests-per-second 1000000 --burst-size 1000000)
  echo "-- llmtrace-node ${NODE_ARGS[*]}"
  start_proc node-single "$NODE_BIN" "${NODE_ARGS[@]}"
  local node_pid="$PROC_PID" node_url="http://$PROC_PUBLIC"
  run_wrk node "$node_url"
  health_note node-single "$node_pid"
  stop_pid "$node_pid"

  echo "-- llmtrace-plain-bench ${plain_args[*]}"
  start_proc plain "$PLAIN_BIN" "${plain_args[@]}"
  local plain_pid="$PROC_PID"
  run_wrk plain "http://$PROC_PUBLIC"
  health_note plain "$plain_pid"
  stop_pid "$plain_pid"

  echo
  echo "single results:"
  summarize_wrk node; node_rps="$RPS"
  summarize_wrk plain; plain_rps="$RPS"
  awk -v n="$node_rps" -v p="$plain_rps" 'BEGIN {
    r = (p > 0) ? n / p : 0
    printf "  ratio node/plain       %12.3f            (target >= 0.70: %s)\n", r, (r >= 0.7) ? "met" : "NOT met"
  }'
}

bench_memory() {
  echo
  echo "== memory: $BENCH_TENANTS distinct tenants drained via /v1/check/batch (1000 per request) =="
  node_args
  NODE_ARGS+=(--requests-per-second 1 --burst-size 1000)
  echo "-- llmtrace-node ${NODE_ARGS[*]}"
  start_proc node-memory "$NODE_BIN" "${NODE_ARGS[@]}"
  local pid="$PROC_PID" addr="$PROC_PUBLIC" admin="$PROC_ADMIN" idle after hwm out="$WORKDIR/drain.txt"

  # Warm-up: one batch of 1000 other tenants, so buffers, thread stacks and
  # allocator arenas are in the baseline.
  timeout 120 python3 "$BENCH_DIR/drain.py" --addr "$addr" --tenants 1000 --prefix warm- \
    --cost 1000 --threads 1 --deadline 60 >"$WORKDIR/warmup.txt" || {
      log "warm-up batch failed"; health_note node-memory "$pid"; exit 1; }
  sleep 1
  idle="$(vmrss_kb "$pid")"
  echo "  idle VmRSS after warm-up batch: $idle kB"

  timeout $((BENCH_DRAIN_DEADLINE + 120)) python3 "$BENCH_DIR/drain.py" --addr "$addr" \
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

[[ "$MODE" == memory ]] || ensure_wrk
command -v python3 >/dev/null 2>&1 || { log "python3 is required"; exit 1; }
build
[[ "$MODE" == memory ]] || bench_single
[[ "$MODE" == single ]] || bench_memory
