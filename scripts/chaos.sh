#!/usr/bin/env bash
# `make chaos`: the fault suite (tests/src/bin/cadre-chaos.rs). Builds the services and runs
# them as separate processes on a private nats-server and a fresh database (127.0.0.1 only),
# injects faults under load, and checks after each that nothing was lost, duplicated or
# projected wrongly; prints a table of figures and exits non-zero when an invariant failed.
# Everything it starts (processes, databases) is stopped, also on Ctrl-C.
#
# Settings (environment):
#   CHAOS_PROFILE     full (default: every fault, CHAOS_ROUNDS times) or short (one round of
#                     the faults that need no ack-wait expiry, about a minute: what `make test` runs)
#   CHAOS_FAULTS      comma-separated faults, overriding the profile's: kill-worker,
#                     kill-coordinator, kill-projector, pause-worker, poison, pg-kill, rate-limit,
#                     projector-failover, lost-ack, restart-nats, kill-nats-node, republish
#                     (or all)
#   CHAOS_CLUSTER     1: every fault but restart-nats on a 3-node NATS cluster (streams with 3
#                     replicas); by default only kill-nats-node runs on one (after the others),
#                     the rest on a single nats-server. On the cluster lost-ack is milder: its proxy fronts one
#                     node, and a client cut off may reconnect to another node directly
#   CHAOS_ROUNDS      how many times each fault is injected (full: 3, short: 1)
#   CHAOS_EXECUTIONS  runs started as load for each fault (full: 24, short: 12)
#   CHAOS_STEPS       steps of the pipeline each run goes through (4)
#   CHAOS_LATENCY_MS  latency of the offline LLM provider's answers (200)
#   CHAOS_DRAIN_SECS  the most the system may take to drain after a fault (180)
#   CHAOS_SEED        the seed of the faults' random choices (printed by every run)
#   CHAOS_LOG_DIR     where the services' logs go (default: a temporary directory, kept and
#                     printed when a check failed)
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/services-env.sh

case "${CHAOS_PROFILE:-full}" in
  full) ;;
  short)
    # Killing a worker, the coordinator or a NATS node, restarting NATS (acks and naks in flight
    # to it are lost), or pausing a worker, waits out an ack wait (10 s or 30 s).
    export CHAOS_FAULTS=${CHAOS_FAULTS:-kill-projector,poison,pg-kill,rate-limit,projector-failover,lost-ack,republish}
    export CHAOS_ROUNDS=${CHAOS_ROUNDS:-1}
    export CHAOS_EXECUTIONS=${CHAOS_EXECUTIONS:-12}
    ;;
  *) echo "CHAOS_PROFILE must be full or short, not '$CHAOS_PROFILE'" >&2; exit 2 ;;
esac

cargo build --locked -p cadre-coordinator -p cadre-agent-worker -p cadre-projector --bins \
  -p cadre-tests --bin cadre-chaos
target=${CARGO_TARGET_DIR:-target}
exec "$target/debug/cadre-chaos"
