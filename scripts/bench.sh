#!/usr/bin/env bash
# `make bench`: BENCH_EXECUTIONS (1000) executions of a BENCH_STEPS (5)-step pipeline on the
# offline provider (BENCH_LATENCY_MS of simulated LLM latency, default 0). Prints figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-nats.sh
CADRE_ADMIN_DATABASE_URL=$(bash scripts/ensure-postgres.sh)
export CADRE_ADMIN_DATABASE_URL
export NATS_SERVER_BIN="$PWD/.cadre/bin/nats-server"
cargo build --release --locked -q -p cadre-tests --bin cadre-bench
exec target/release/cadre-bench
