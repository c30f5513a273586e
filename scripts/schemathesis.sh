#!/usr/bin/env bash
# Fuzzes the coordinator's HTTP API against its own OpenAPI document (GET /openapi.json) with
# Schemathesis (from PyPI, into .cadre/venv-schemathesis): a live stack (NATS, a fresh Postgres
# database, the three services, debug builds) gets generated valid and invalid requests for
# every operation, and every answer must be no server error, have a status, content type,
# headers and body the document declares. Bounded in time (SCHEMATHESIS_MAX_TIME, 180 s);
# stops and drops everything it started. Logs: .cadre/logs/schemathesis-*.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
logs=.cadre/logs
mkdir -p "$logs"

# Pinned: a new release may add checks, and CI should not change under us.
schemathesis_version=4.32.5
venv=.cadre/venv-schemathesis
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$schemathesis_version" ]; then
  python=$(command -v python3 || true)
  if [ -z "$python" ] || ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    python=$(command -v python3)
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

log_prefix=schemathesis-
source scripts/local-stack.sh

for tool in curl jq; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done

echo "building the services (debug)..."
cargo build --locked -q -p cadre-coordinator -p cadre-agent-worker -p cadre-projector
bin=$(build_dir debug)
start_nats .cadre/schemathesis-nats-data
create_database "cadre_schemathesis_$$"
start_services "$bin"

api="http://$CADRE_HTTP_ADDR"
wait_ready "$CADRE_HTTP_ADDR"

# Something to find: a team, a workflow whose run completes a step and then waits for a
# person's sign-off (an open escalation), so that the operations on ids reach real resources
# (the fuzzer draws ids from these most of the time, and random ones otherwise).
post() { curl -fsS -X POST -H 'Content-Type: application/json' -d "$2" "$api$1"; }
agents=()
for role in analyst reviewer lead; do
  agents+=("$(post /v1/agents "{\"name\": \"$role\", \"role\": \"$role\", \"skills\": [\"$role\"], \"provider\": \"offline\", \"model\": \"offline\"}" | jq -r .id)")
done
workflow=$(post /v1/workflows "$(jq -n --args '{
  name: "Fuzzed", description: "A step, then a sign-off", participatingAgents: $ARGS.positional,
  configuration: {steps: [
    {id: "design", name: "Design", description: "Design it", type: "analysis",
     instructions: "Design it", expectedOutput: "A design"},
    {id: "sign-off", name: "Sign-off", description: "A person signs off", type: "approval",
     dependsOn: ["design"], instructions: "Sign off", expectedOutput: "A decision"}]}}' "${agents[@]}")" | jq -r .id)
execution=$(post "/v1/workflows/$workflow/executions" '{"input": {"topic": "fuzzing"}}' | jq -r .executionId)
escalation=""
for _ in $(seq 1 150); do
  escalation=$(curl -fsS "$api/v1/escalations?status=open" | jq -r '.[0].id // empty')
  [ -n "$escalation" ] && break
  sleep 0.2
done
[ -n "$escalation" ] || { echo "the seeded run never waited for its sign-off" >&2; exit 1; }
templates=$(curl -fsS "$api/v1/templates" | jq -c '[.[].id]')
config="$logs/schemathesis.toml"
cat >"$config" <<TOML
[dictionaries.agents]
values = $(printf '%s\n' "${agents[@]}" | jq -R . | jq -sc .)
[dictionaries.workflows]
values = ["$workflow"]
[dictionaries.executions]
values = ["$execution"]
[dictionaries.templates]
values = $templates
[dictionaries.escalations]
values = ["$escalation"]
[dictionaries.steps]
values = ["design", "sign-off"]

[parameters]
"query.agentId" = { dictionary = "agents", probability = 0.5 }
"query.workflowId" = { dictionary = "workflows", probability = 0.5 }
"query.executionId" = { dictionary = "executions", probability = 0.5 }

[[operations]]
include-path-regex = "^/v1/agents/"
parameters = { "path.id" = { dictionary = "agents", probability = 0.7 } }
[[operations]]
include-path-regex = "^/v1/workflows/"
parameters = { "path.id" = { dictionary = "workflows", probability = 0.7 } }
[[operations]]
include-path-regex = "^/v1/executions/"
parameters = { "path.id" = { dictionary = "executions", probability = 0.7 }, "path.step" = { dictionary = "steps", probability = 0.7 } }
[[operations]]
include-path-regex = "^/v1/templates/"
parameters = { "path.id" = { dictionary = "templates", probability = 0.7 } }
[[operations]]
include-path-regex = "^/v1/escalations/"
parameters = { "path.id" = { dictionary = "escalations", probability = 0.7 } }
TOML

# GET /v1/events is a live feed that never ends: it is documented, but a fuzzer can only time
# out on it. The execution feed ends (an unknown execution is a 404), so it is fuzzed.
# Python 3.11 reports a recursion limit hit while Hypothesis parses a large source file (to
# describe a filter) as "SystemError: AST constructor recursion depth mismatch" instead of a
# RecursionError: a deeper limit keeps the coverage phase from dying of it.
if ! "$venv/bin/python" -c 'import sys; sys.setrecursionlimit(20000); from schemathesis.cli import schemathesis; sys.argv[0] = "schemathesis"; schemathesis()' \
  --config-file "$config" run "$api/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --exclude-path /v1/events \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
  --max-time "${SCHEMATHESIS_MAX_TIME:-180}" \
  --request-timeout 20 \
  --workers 2 \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --suppress-health-check too_slow,filter_too_much \
  --report junit --report-dir "$logs/schemathesis-report"; then
  # A server error's cause is in the services' logs, which CI does not keep: show it here.
  echo "the services' errors and warnings (last 40):" >&2
  grep -h -E '(ERROR|WARN)' "$logs"/schemathesis-{coordinator,projector,agent-worker}.log | tail -n 40 >&2 || true
  exit 1
fi
