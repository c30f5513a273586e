# Sourced by scripts that run Cadre's services on this machine (demo.sh, schemathesis.sh): a
# private nats-server, a database of their own, and the three services, each stopped (and the
# database dropped) when the script ends, is interrupted (Ctrl-C) or is told to stop (TERM).
# Uses the caller's `root` (the workspace) and `logs` (where each process writes its log, with
# `log_prefix` before its name). A caller adds what else it starts in the background to `pids`,
# and files of the run's own to `run_files`.

pids=()
run_files=()
# The database this run created, dropped when it ends (the run's events die with its NATS).
created_database=""
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  for file in "${run_files[@]}"; do rm -f "$file"; done
  run_files=()
  if [ -n "$created_database" ]; then
    psql "$admin" -qc "DROP DATABASE IF EXISTS $created_database WITH (FORCE)" >/dev/null 2>&1 || true
    created_database=""
  fi
}
trap cleanup EXIT
# A trap that returned would let the script carry on after the interrupted command: stop here.
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# A local port nothing listens on.
free_port() {
  while :; do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# A current nats-server with JetStream on a free port, its data in `$1` (emptied first);
# exports NATS_URL.
start_nats() {
  local data=$1 port
  bash "$root/scripts/ensure-nats.sh"
  port=$(free_port)
  rm -rf "$data"
  "$root/.cadre/bin/nats-server" -a 127.0.0.1 -p "$port" -js -sd "$data" >"$logs/${log_prefix}nats-server.log" 2>&1 &
  pids+=($!)
  export NATS_URL="nats://127.0.0.1:$port"
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
}

# A new database named `$1` on the local Postgres (installed and started if none answers);
# exports DATABASE_URL.
create_database() {
  admin=$(bash "$root/scripts/ensure-postgres.sh")
  psql "$admin" -qc "CREATE DATABASE $1" >/dev/null
  created_database=$1
  export DATABASE_URL="${admin%/*}/$1"
}

# Where cargo puts `$1` (debug or release) builds: CARGO_TARGET_DIR (relative to the
# workspace) when set.
build_dir() {
  local target=${CARGO_TARGET_DIR:-target}
  case "$target" in /*) ;; *) target="$root/$target" ;; esac
  echo "$target/$1"
}

# The read models migrated, then the projector, an agent worker and the coordinator from the
# binaries in `$1`, on free ports; exports CADRE_HTTP_ADDR (the API's address).
start_services() {
  local bin=$1
  if ! "$bin/cadre-projector" migrate >"$logs/${log_prefix}migrate.log" 2>&1; then
    echo "migrating the read models failed:" >&2
    bash "$root/scripts/log-excerpt.sh" "$logs/${log_prefix}migrate.log" >&2
    exit 1
  fi
  export CADRE_HTTP_ADDR="127.0.0.1:$(free_port)"
  CADRE_HEALTH_ADDR="127.0.0.1:$(free_port)" "$bin/cadre-projector" run >"$logs/${log_prefix}projector.log" 2>&1 &
  pids+=($!)
  CADRE_HEALTH_ADDR="127.0.0.1:$(free_port)" "$bin/cadre-agent-worker" >"$logs/${log_prefix}agent-worker.log" 2>&1 &
  pids+=($!)
  "$bin/cadre-coordinator" >"$logs/${log_prefix}coordinator.log" 2>&1 &
  pids+=($!)
}

# Waits until the coordinator at `$1` (host:port) answers `GET /readyz` with 200, for at most a
# minute; else shows the end of its log and stops the script. Plain bash: no curl needed.
wait_ready() {
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 1 300); do
    if (
      exec 3<>"/dev/tcp/$host/$port" &&
        printf 'GET /readyz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" >&3 &&
        read -r _ status _ <&3 && [ "$status" = 200 ]
    ) 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "the coordinator at $1 did not become ready; the end of its log:" >&2
  bash "$root/scripts/log-excerpt.sh" "$logs/${log_prefix}coordinator.log" >&2
  exit 1
}
