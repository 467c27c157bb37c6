#!/usr/bin/env bash
# A local llmtrace cluster on loopback: redis-server, N nodes and an nginx load
# balancer in front of their public listeners.
#
#   scripts/cluster.sh up [N]     start redis, N nodes (default 3) and nginx; print URLs
#   scripts/cluster.sh status     what runs, with each node's /readyz
#   scripts/cluster.sh down       stop exactly the processes `up` started
#
# Every port is picked free at start (nodes bind port 0 and print what they
# got). State, pids, configs and logs live under $LLMTRACE_CLUSTER_DIR
# (default target/cluster). The node binary is $LLMTRACE_NODE_BIN, else
# target/release/llmtrace-node, built with cargo when missing. Needs
# redis-server, nginx, curl and python3 (to probe free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

dir=${LLMTRACE_CLUSTER_DIR:-$root/target/cluster}
pids=$dir/pids
bin=${LLMTRACE_NODE_BIN:-$root/target/release/llmtrace-node}
# How long a process may take to come up or to stop.
wait_secs=${LLMTRACE_CLUSTER_WAIT_SECS:-30}

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is missing (apt-get install -y $2)"
}

find_nginx() {
    if command -v nginx >/dev/null 2>&1; then command -v nginx
    elif [ -x /usr/sbin/nginx ]; then echo /usr/sbin/nginx
    else die "nginx is missing (apt-get install -y nginx)"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Whether pid $1 runs and its command line contains $2 (guards against a
# recycled pid: `down` never signals a process it did not start).
is_ours() {
    local pid=$1 what=$2
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$what"
}

# Records a started process: name, pid, and a string its command line holds.
record() {
    printf '%s %s\n' "$2" "$3" >"$pids/$1.pid"
}

# Polls `$@` until it succeeds, at most $wait_secs.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + wait_secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${wait_secs}s waiting for $what"
        sleep 0.1
    done
}

running_components() {
    local f
    for f in "$pids"/*.pid; do
        [ -e "$f" ] || continue
        local pid what
        read -r pid what <"$f"
        if is_ours "$pid" "$what"; then basename "$f" .pid; fi
    done
}

up() {
    local n=${1:-3}
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "N must be 1..99, got '$n'"
    if [ -d "$pids" ] && [ -n "$(running_components)" ]; then
        die "a cluster already runs from $dir (scripts/cluster.sh status; scripts/cluster.sh down)"
    fi
    # A failed `up` stops whatever it had started.
    trap 'rc=$?; if [ "$rc" -ne 0 ]; then echo "cluster.sh: up failed; stopping what it started" >&2; down >&2; fi' EXIT
    need redis-server redis-server
    need curl curl
    need python3 python3
    local nginx
    nginx=$(find_nginx)
    if [ ! -x "$bin" ]; then
        [ -z "${LLMTRACE_NODE_BIN:-}" ] || die "LLMTRACE_NODE_BIN=$bin is not executable"
        echo "==> building the release binary (cargo build --release -p llmtrace-node)"
        cargo build --release -p llmtrace-node
    fi
    rm -rf "$dir"
    mkdir -p "$pids" "$dir/redis" "$dir/nginx" "$dir/logs"

    # Admin token, when this build has one: random, kept in a file only we read.
    local token=""
    if "$bin" --help | grep -q -- '--admin-token'; then
        token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
        (umask 077 && printf '%s\n' "$token" >"$dir/admin-token")
    fi

    local redis_port
    redis_port=$(free_port)
    nohup redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$dir/redis" </dev/null >"$dir/logs/redis.log" 2>&1 &
    record redis $! "redis-server"
    wait_for "redis-server on port $redis_port" \
        bash -c "exec 3<>/dev/tcp/127.0.0.1/$redis_port"
    local redis_url="redis://127.0.0.1:$redis_port"

    [ -z "$token" ] || export LLMTRACE_ADMIN_TOKEN="$token"
    local seed="" i publics=()
    for ((i = 1; i <= n; i++)); do
        local log="$dir/logs/node-$i.log"
        local args=(--node-id "node-$i" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
            --cluster-listen 127.0.0.1:0 --redis-url "$redis_url")
        [ -z "$seed" ] || args+=(--seeds "$seed")
        nohup "$bin" "${args[@]}" </dev/null >"$log" 2>&1 &
        local pid=$!
        record "node-$i" "$pid" "--node-id node-$i --listen"
        # Ready line printed, or the process gone (then its log says why).
        wait_for "node-$i to start (see $log)" \
            bash -c "grep -q '^llmtrace-node listening ' '$log' || ! kill -0 $pid"
        grep -q '^llmtrace-node listening ' "$log" ||
            die "node-$i exited at start; the end of $log:
$(tail -n 5 "$log")"
        local line
        line=$(grep -m1 '^llmtrace-node listening ' "$log")
        local public admin cluster
        public=$(sed -E 's/.* public=([^ ]+).*/\1/' <<<"$line")
        admin=$(sed -E 's/.* admin=([^ ]+).*/\1/' <<<"$line")
        cluster=$(sed -E 's/.* cluster=([^ ]+).*/\1/' <<<"$line")
        printf 'node-%s public=%s admin=%s cluster=%s\n' "$i" "$public" "$admin" "$cluster" \
            >>"$dir/nodes"
        publics+=("$public")
        [ -n "$seed" ] || seed=$cluster
    done
    for ((i = 1; i <= n; i++)); do
        local public
        public=$(awk -v id="node-$i" '$1 == id { sub("public=", "", $2); print $2 }' "$dir/nodes")
        wait_for "node-$i to be ready (GET /readyz)" curl -fsS "http://$public/readyz"
    done

    local lb_port user="-"
    lb_port=$(free_port)
    [ "$(id -u)" -ne 0 ] || user="nobody nogroup"
    sh deploy/render-nginx.sh deploy/nginx.conf "$dir/nginx" "127.0.0.1:$lb_port" "$user" \
        "${publics[@]}" >"$dir/nginx/nginx.conf"
    nohup "$nginx" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log" \
        -g 'daemon off;' </dev/null >"$dir/logs/nginx.log" 2>&1 &
    record nginx $! "$dir/nginx/nginx.conf"
    wait_for "nginx on port $lb_port (see $dir/nginx/error.log)" \
        curl -fsS "http://127.0.0.1:$lb_port/lb/healthz"
    echo "http://127.0.0.1:$lb_port" >"$dir/lb-url"

    local admin1
    admin1=$(awk '$1 == "node-1" { sub("admin=", "", $3); print $3 }' "$dir/nodes")
    echo "llmtrace cluster up: $n nodes, redis, nginx (state in $dir)"
    echo "  load balancer  http://127.0.0.1:$lb_port"
    sed 's/^/  /' "$dir/nodes"
    echo "  redis          $redis_url"
    echo "  dashboard      http://$admin1/admin/ui"
    if [ -n "$token" ]; then
        echo "  admin token    in $dir/admin-token"
        echo "  curl -s -H \"Authorization: Bearer \$(cat $dir/admin-token)\" http://$admin1/admin/cluster"
    else
        echo "  curl -s http://$admin1/admin/cluster"
    fi
    echo "try:"
    echo "  curl -s -X POST http://127.0.0.1:$lb_port/v1/check -d '{\"tenant_id\": \"acme\", \"cost\": 1}'"
    echo "stop with: scripts/cluster.sh down"
    trap - EXIT
}

# Sends SIGTERM to a recorded component and waits for it (SIGKILL after the wait).
stop_component() {
    local name=$1 f="$pids/$1.pid" pid what
    [ -e "$f" ] || return 0
    read -r pid what <"$f"
    if is_ours "$pid" "$what"; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
}

wait_stopped() {
    local name=$1 f="$pids/$1.pid" pid what
    [ -e "$f" ] || return 0
    read -r pid what <"$f"
    local deadline=$((SECONDS + wait_secs))
    while is_ours "$pid" "$what"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "cluster.sh: $name (pid $pid) did not stop in ${wait_secs}s; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$f"
    echo "stopped $name (pid $pid)"
}

down() {
    [ -d "$pids" ] || { echo "no cluster state in $dir"; return 0; }
    # nginx first (no new traffic), then the nodes (each leaves gracefully and
    # writes its buckets to Redis), Redis last.
    stop_component nginx
    wait_stopped nginx
    local f nodes=()
    for f in "$pids"/node-*.pid; do
        [ -e "$f" ] && nodes+=("$(basename "$f" .pid)")
    done
    local n
    for n in "${nodes[@]}"; do stop_component "$n"; done
    for n in "${nodes[@]}"; do wait_stopped "$n"; done
    stop_component redis
    wait_stopped redis
    rm -f "$dir/lb-url"
    echo "cluster down (logs kept in $dir/logs)"
}

status() {
    [ -d "$pids" ] || { echo "no cluster state in $dir"; return 3; }
    local f any=0
    for f in "$pids"/*.pid; do
        [ -e "$f" ] || continue
        local name pid what state
        name=$(basename "$f" .pid)
        read -r pid what <"$f"
        if is_ours "$pid" "$what"; then state=running; any=1; else state=gone; fi
        local extra=""
        case $name in
            node-*)
                local public
                public=$(awk -v id="$name" '$1 == id { sub("public=", "", $2); print $2 }' "$dir/nodes")
                if [ "$state" = running ]; then
                    if curl -fsS "http://$public/readyz" >/dev/null 2>&1; then
                        extra="readyz ok      $(awk -v id="$name" '$1 == id { $1 = ""; print }' "$dir/nodes")"
                    else
                        extra="readyz failed  $(awk -v id="$name" '$1 == id { $1 = ""; print }' "$dir/nodes")"
                    fi
                fi
                ;;
            nginx) [ ! -e "$dir/lb-url" ] || extra=$(cat "$dir/lb-url") ;;
        esac
        printf '%-8s pid %-7s %-8s %s\n' "$name" "$pid" "$state" "$extra"
    done
    [ "$any" -eq 1 ] || return 3
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    *) usage ;;
esac
