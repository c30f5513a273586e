#!/usr/bin/env bash
# Cadre's main job, locally, driven by its CLI as a person would: NATS and Postgres (reused when
# NATS_URL / DATABASE_URL point at running ones, else started here), the three services, then
# `cadre` applies seed 002's team with a workflow made from the system template "Implement a
# feature" (examples/feature-team.yaml), runs it on the built-in offline LLM provider, approves
# its production release as the person in the loop, and reads back how the team worked.
# From a terminal, the stack and its web console then stay up until Ctrl-C; otherwise (CI,
# scripts) it ends after the final state. Either way everything it started is stopped, and the
# database it created dropped. Logs: .cadre/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mkdir -p .cadre/logs
logs=.cadre/logs
log_prefix=""
source scripts/local-stack.sh

team=examples/feature-team.yaml
workflow="Real-time inspection collaboration"
input=examples/feature-input.json
# A run that has not ended by then has gone wrong.
run_timeout=${CADRE_DEMO_TIMEOUT:-300}

started_nats=""
if [ -z "${NATS_URL:-}" ]; then
  start_nats .cadre/nats-data
  started_nats=1
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
cargo build --release --locked -q \
  -p cadre-coordinator -p cadre-agent-worker -p cadre-projector -p cadre-cli
bin=$(build_dir release)
start_services "$bin"
wait_ready "$CADRE_HTTP_ADDR"
# Where the CLI finds the API.
export CADRE_API="http://$CADRE_HTTP_ADDR"
echo "web console: $CADRE_API/console (open it to watch the run live)"

section() { printf '\n== %s\n' "$*"; }
# A cadre command as a person would type it.
show() {
  local line="\$ cadre" arg
  for arg in "$@"; do
    case "$arg" in *[[:space:]]*) line+=" \"$arg\"" ;; *) line+=" $arg" ;; esac
  done
  echo "$line"
}
cadre() {
  show "$@"
  "$bin/cadre" "$@"
}

section "The team, and a workflow made from a template, applied from $team"
cadre apply -f "$team"
cadre get agents

section "The template: its roles and its four phases"
cadre describe template "Implement a feature"

section "The run, as it happens (the demo is the person in the loop: it signs off the release)"
show run "$workflow" --input "$input" --follow
# In the background, so that this shell can act on what waits for a person meanwhile; through
# a pipe, so that it prints plain lines (a progress bar would garble the lines printed here).
follow_pipe=.cadre/follow.pipe
rm -f "$follow_pipe"
mkfifo "$follow_pipe"
run_files+=("$follow_pipe")
cat "$follow_pipe" &
printer=$!
pids+=("$printer")
"$bin/cadre" run "$workflow" --input "$input" --follow >"$follow_pipe" &
follower=$!
pids+=("$follower")
deadline=$((SECONDS + run_timeout))
resolved=()
while kill -0 "$follower" 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "the run did not end within $run_timeout s; service logs are in $logs/" >&2
    exit 1
  fi
  for id in $("$bin/cadre" get escalations --workflow "$workflow" --status open -q || true); do
    # The read models may list one just resolved as open a moment longer.
    case " ${resolved[*]} " in *" $id "*) continue ;; esac
    cadre resolve "$id" --action approve --by "Release manager" \
      --reason "staging and smoke tests are green"
    resolved+=("$id")
  done
  sleep 0.5
done
outcome=0
wait "$follower" || outcome=$?
wait "$printer" || true
rm -f "$follow_pipe"

section "Final state"
cadre get executions --workflow "$workflow"
execution=$("$bin/cadre" get executions --workflow "$workflow" -q | sed -n 1p)

if [ -n "$execution" ]; then
  section "How the team worked, read back from Postgres"
  cadre describe execution "$execution"
fi

status=0
if [ "$outcome" != 0 ]; then
  echo "the run did not complete (cadre run --follow exited with $outcome)" >&2
  status=1
fi
if [ "${#resolved[@]}" = 0 ]; then
  echo "nothing waited for a person: the production release was not signed off" >&2
  status=1
fi

if [ -t 1 ]; then
  stops="the services"
  [ -n "$started_nats" ] && stops+=" and NATS"
  [ -n "${database:-}" ] && stops+=", and drops the database $database"
  section "The stack stays up until Ctrl-C"
  cat <<EOF
  Web console: $CADRE_API/console
  The CLI, from another terminal here ($root):
    export CADRE_API=$CADRE_API
    export PATH="$bin:\$PATH"
    cadre get workflows
    cadre describe execution $execution
    cadre logs $execution
    cadre run "$workflow" --input $input --follow
      (its release waits for you: cadre escalations, then cadre resolve ID --action approve)
  Ctrl-C stops $stops.
EOF
  sleep infinity &
  pids+=($!)
  wait $! || true
fi
exit "$status"
