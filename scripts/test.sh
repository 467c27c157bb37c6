#!/usr/bin/env bash
# Runs every check CI runs, on a fresh machine: installs what the tests need
# (redis-server, redis-cli, nginx, Chromium and ChromeDriver, curl; apt-get, as root),
# then format check, clippy with warnings as errors, and the whole test suite
# (unit, actor/HTTP and the integration tests that start real redis-server,
# llmtrace-node, nginx and headless Chromium processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# redis-cli builds the Redis Cluster of the Redis deployment tests.
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# nginx (load balancer tests, scripts/cluster.sh), Debian's Chromium and
# ChromeDriver (dashboard test), curl (scripts/cluster.sh).
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: missing ${need_apt[*]}; install it (apt-get install -y ${need_apt[*]}) or run as root" >&2
        exit 1
    fi
    echo "==> installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The packages may start a system redis on 6379 or nginx on 80; tests never
# use them (each starts its own on an ephemeral port), so they do no harm.
# The tools are installed now: tests that need them fail instead of skipping.
export LLMTRACE_REQUIRE_TOOLS=1

# The proxy test drives the node with the official `openai` Python client,
# installed from PyPI into a venv under target/ (only when missing).
venv="$PWD/target/py-venv"
if ! "$venv/bin/python" -c "import openai" >/dev/null 2>&1; then
    echo "==> creating $venv with the openai client"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq python3-venv >/dev/null
        fi
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check openai
fi
export LLMTRACE_PYTHON="$venv/bin/python"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> building llmtrace-node for the integration tests"
cargo build -p llmtrace-node --bins
export LLMTRACE_NODE_BIN="$PWD/target/debug/llmtrace-node"

echo "==> cargo test"
# Unit, HTTP and integration tests (benches are compiled by clippy above).
# Two tests at a time: the integration tests start several processes each.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
RUST_TEST_THREADS="${TEST_THREADS:-2}" cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
