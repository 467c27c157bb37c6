#!/usr/bin/env bash
# Benchmarks of the llmtrace cluster node: scripts/bench.sh [single|memory|cluster|redis|failover|proxy|rls|all]
# (modes and BENCH_* settings: scripts/bench.sh --help; the tool is integration/src/bin/bench).
cd "$(dirname "$0")/.." && exec cargo run --release -p llmtrace-integration --bin bench -- "$@"
