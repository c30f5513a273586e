#!/usr/bin/env bash
# `make bench-console`: the web console under load. A release build of the services in one
# process (cadre-bench-console, on a private nats-server and a fresh database, as `make bench`)
# runs BENCH_RATE steps/s of BENCH_STEPS-step executions on the zero-latency offline provider
# for BENCH_SECONDS, while Chromium (driven by tests/browser/console_bench.py) keeps the list
# pages open, follows runs of a slower watched workflow in the execution view and loads every
# page. Prints the achieved steps/s, page load times and the delay from each event's time in the
# log to its change on the page (p50/p95/p99/max). Asserts nothing. Settings:
#   BENCH_RATE (1000)            steps per second offered
#   BENCH_SECONDS (30)           how long the load runs
#   BENCH_STEPS (5)              steps per load execution
#   BENCH_WORKFLOWS (4)          load workflows the executions are spread over
#   BENCH_WATCHED_STEPS (12), BENCH_WATCHED_STEP_MS (250)   the watched workflow's runs
#   BENCH_START_PARALLELISM (512), BENCH_WORKER_CONCURRENCY (256), BENCH_COORDINATOR_SHARDS (128)
# Figures also go to .cadre/bench-console.json; the stack's log to .cadre/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/browser-env.sh
source scripts/services-env.sh
cargo build --release --locked -q -p cadre-tests --bin cadre-bench-console
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
exec python3 tests/browser/console_bench.py "$target/release/cadre-bench-console" .cadre/bench-console.json
