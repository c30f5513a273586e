#!/usr/bin/env bash
# Cadre's main job, locally: NATS and Postgres (reused when NATS_URL / DATABASE_URL point at
# running ones, else started here), the three services, and the system template "Implement a
# feature" run by seed 002's team on the built-in offline LLM provider. Logs: .cadre/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mkdir -p .cadre/logs
logs=.cadre/logs
log_prefix=""
source scripts/local-stack.sh

if [ -z "${NATS_URL:-}" ]; then
  start_nats .cadre/nats-data
  echo "started nats-server $(.cadre/bin/nats-server --version | awk '{print $2}') at $NATS_URL"
else
  echo "using NATS at $NATS_URL"
fi

if [ -z "${DATABASE_URL:-}" ]; then
  database="cadre_demo_$(date +%s)"
  create_database "$database"
  echo "created database $database"
else
  echo "using Postgres at ${DATABASE_URL%%\?*}"
fi

echo "building (release)..."
cargo build --release --locked -q -p cadre-coordinator -p cadre-agent-worker -p cadre-projector
cargo build --release --locked -q -p cadre-tests --bin cadre-demo
bin=$(build_dir release)
start_services "$bin"

echo "web console: http://$CADRE_HTTP_ADDR/console (while the demo runs)"
"$bin/cadre-demo" --api "http://$CADRE_HTTP_ADDR"
