#!/usr/bin/env bash
# `make bench`: the three services in one process with the benchmark, on a private nats-server
# and a fresh database, on the offline provider. Prints figures, asserts nothing. Settings:
#   BENCH_EXECUTIONS (1000)   executions to start
#   BENCH_STEPS (5)           steps per workflow
#   BENCH_SHAPE (pipeline)    pipeline: each step depends on the one before;
#                             dag: layers of BENCH_FANOUT steps, each step depending on every
#                             step of the layer before (fan-out, then fan-in)
#   BENCH_FANOUT (10)         layer width of the dag shape
#   BENCH_MODE (run)          run: wait for every execution and the projector, print throughput,
#                             handoff, execution latency, overlap and projection lag;
#                             starts: start BENCH_EXECUTIONS executions of one workflow as fast
#                             as the API accepts them, print starts/s and request latency only
#                             sequential: one execution at a time (low load), each started once
#                             the one before is visible in the read models, print ms per step
#   BENCH_RATE (0)            run mode: steps/s offered, as executions started evenly (an open
#                             loop), to measure handoff and lag at a set load; 0: all at once
#   BENCH_START_PARALLELISM (64)  concurrent HTTP clients starting executions
#   BENCH_WORKFLOWS (1)       run mode: spread the executions over this many identical workflows
#   BENCH_LATENCY_MS (0)      simulated LLM latency of the offline provider
#   BENCH_WORKLOAD (team)     team: each step shares knowledge and raises a concern;
#                             noop: each step's answer is a ~200 B output, nothing else
#   BENCH_WORKER_CONCURRENCY (256), BENCH_COORDINATOR_SHARDS (128)
# Examples:
#   make bench
#   BENCH_SHAPE=dag BENCH_STEPS=50 BENCH_FANOUT=10 BENCH_EXECUTIONS=200 make bench
#   BENCH_MODE=starts BENCH_EXECUTIONS=1000 make bench
#   BENCH_MODE=sequential BENCH_EXECUTIONS=100 make bench
#   BENCH_RATE=1000 BENCH_EXECUTIONS=2000 make bench    (1,000 steps/s offered for 10 s)
# A working nats-server in NATS_SERVER_BIN is used as is; otherwise scripts/services-env.sh
# installs one under .cadre/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${NATS_SERVER_BIN:-}" ] && "$NATS_SERVER_BIN" --version >/dev/null 2>&1; then
  CADRE_ADMIN_DATABASE_URL=$(bash scripts/ensure-postgres.sh)
  export CADRE_ADMIN_DATABASE_URL
else
  source scripts/services-env.sh
fi
cargo build --release --locked -q -p cadre-tests --bin cadre-bench
exec "${CARGO_TARGET_DIR:-target}/release/cadre-bench"
