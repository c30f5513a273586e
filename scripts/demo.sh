#!/usr/bin/env bash
# Cadre's main job, locally: NATS and Postgres (reused when NATS_URL / DATABASE_URL point at
# running ones, else started here), the three services, and the system template "Implement a
# feature" run by seed 002's team on the built-in offline LLM provider. Logs: .cadre/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mkdir -p .cadre/logs
pids=()
# The database this run created, dropped when it ends (the run's events die with its NATS).
created_database=""
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$created_database" ]; then
    psql "$admin" -qc "DROP DATABASE IF EXISTS $created_database" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT INT TERM

# A local port nothing listens on.
free_port() {
  while :; do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null || { echo "$port"; return; }
  done
}

if [ -z "${NATS_URL:-}" ]; then
  bash scripts/ensure-nats.sh
  port=$(free_port)
  rm -rf .cadre/nats-data
  .cadre/bin/nats-server -a 127.0.0.1 -p "$port" -js -sd .cadre/nats-data >.cadre/logs/nats-server.log 2>&1 &
  pids+=($!)
  export NATS_URL="nats://127.0.0.1:$port"
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  echo "started nats-server $(.cadre/bin/nats-server --version | awk '{print $2}') at $NATS_URL"
else
  echo "using NATS at $NATS_URL"
fi

if [ -z "${DATABASE_URL:-}" ]; then
  admin=$(bash scripts/ensure-postgres.sh)
  database="cadre_demo_$(date +%s)"
  psql "$admin" -qc "CREATE DATABASE $database" >/dev/null
  created_database=$database
  export DATABASE_URL="${admin%/*}/$database"
  echo "created database $database"
else
  echo "using Postgres at ${DATABASE_URL%%\?*}"
fi

echo "building (release)..."
cargo build --release --locked -q -p cadre-coordinator -p cadre-agent-worker -p cadre-projector
cargo build --release --locked -q -p cadre-tests --bin cadre-demo
# Where cargo put them: CARGO_TARGET_DIR (relative to the workspace) when set.
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$root/$target" ;; esac
bin="$target/release"

if ! "$bin/cadre-projector" migrate >.cadre/logs/migrate.log 2>&1; then
  echo "migrating the read models failed:" >&2
  tail -n 20 .cadre/logs/migrate.log >&2
  exit 1
fi
http_port=$(free_port)
export CADRE_HTTP_ADDR="127.0.0.1:$http_port"
CADRE_HEALTH_ADDR="127.0.0.1:$(free_port)" "$bin/cadre-projector" run >.cadre/logs/projector.log 2>&1 &
pids+=($!)
CADRE_HEALTH_ADDR="127.0.0.1:$(free_port)" "$bin/cadre-agent-worker" >.cadre/logs/agent-worker.log 2>&1 &
pids+=($!)
"$bin/cadre-coordinator" >.cadre/logs/coordinator.log 2>&1 &
pids+=($!)

echo "web console: http://$CADRE_HTTP_ADDR/console (while the demo runs)"
"$bin/cadre-demo" --api "http://$CADRE_HTTP_ADDR"
