#!/usr/bin/env bash
# `make bench-scale`: throughput against the number of coordinator replicas
# (tests/src/bin/cadre-scale.rs). For each count: a fresh 3-node NATS cluster (streams with 3
# replicas, every write synced to disk) and a fresh database on 127.0.0.1, the projector, the
# agent workers and that many coordinators as separate processes (release builds), executions
# of a pipeline on the offline provider (no latency) started round-robin over the
# coordinators' APIs. Prints steps/s and execution latency per count and a table; asserts no
# time. Exits non-zero only when a start was never acknowledged or runs failed or got lost.
# Everything it starts (processes, servers, databases) is stopped, also on Ctrl-C.
#
# Settings (environment):
#   SCALE_COORDINATORS       the coordinator counts to measure, in order ("1 2 4")
#   SCALE_EXECUTIONS         executions started for each count (500)
#   SCALE_STEPS              steps of the pipeline (5)
#   SCALE_WORKERS            agent workers (2)
#   SCALE_WORKFLOWS          identical workflows the executions are spread over (1)
#   SCALE_START_PARALLELISM  concurrent start requests (64)
#   SCALE_STALL_SECS         a run not ended when the log stood still this long is lost; also
#                            the most the read models may take to catch up (120)
#   SCALE_LOG_DIR            where the services' and nats-servers' logs go (default: a temporary
#                            directory, kept and printed when a run failed)
# Examples:
#   make bench-scale
#   SCALE_COORDINATORS="1 2" SCALE_EXECUTIONS=200 make bench-scale
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/services-env.sh

cargo build --release --locked -q -p cadre-coordinator -p cadre-agent-worker -p cadre-projector \
  --bins -p cadre-tests --bin cadre-scale
exec "${CARGO_TARGET_DIR:-target}/release/cadre-scale"
