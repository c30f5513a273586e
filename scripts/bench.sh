#!/usr/bin/env bash
# `make bench`: BENCH_EXECUTIONS (1000) executions of a BENCH_STEPS (5)-step pipeline on the
# offline provider (BENCH_LATENCY_MS of simulated LLM latency, default 0). Prints figures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services-env.sh
cargo build --release --locked -q -p cadre-tests --bin cadre-bench
exec target/release/cadre-bench
