#!/usr/bin/env bash
# `make bench-peers`: Cadre and Restate side by side on the same workload, in one run.
# Restate is its published server (npm @restatedev/restate-server, pinned in
# bench/peers/restate/server/, installed under .cadre/) running a Workflow written with its
# Rust SDK (bench/peers/restate/), each step a no-op durable `ctx.run` returning ~200 B of JSON.
# Cadre is `make bench` on the offline provider at zero latency, on each workload of
# BENCH_PEERS_WORKLOADS: `noop` (each step's answer a ~200 B output and nothing else, the peer's
# workload) and `team` (each step shares knowledge and raises a concern, as `make bench` runs
# by default); its figures count only once every read model is projected. Each round runs,
# alternating which peer goes first:
#   throughput  BENCH_EXECUTIONS executions x BENCH_STEPS steps, all in flight -> steps/s
#   low load    BENCH_PEERS_SEQUENTIAL executions one at a time             -> ms per step
# and the tables at the end give each round's figures and the ratio Cadre / Restate.
# Settings:
#   BENCH_EXECUTIONS (1000), BENCH_STEPS (5)   the workload of both
#   BENCH_PEERS_ROUNDS (3)                     rounds
#   BENCH_PEERS_SEQUENTIAL (100)               executions of the low-load run
#   BENCH_PEERS_WORKLOADS ("noop team")        Cadre's workloads (BENCH_WORKLOAD), each run;
#                                              spaces or commas between them
#   BENCH_IN_FLIGHT (256)                      Restate: executions in flight at once (each a
#                                              request waiting for the workflow's result)
#   BENCH_START_PARALLELISM (64)               Cadre: concurrent start requests
# The full output of every run is kept under .cadre/bench-peers/.
# Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

executions=${BENCH_EXECUTIONS:-1000}
steps=${BENCH_STEPS:-5}
rounds=${BENCH_PEERS_ROUNDS:-3}
sequential=${BENCH_PEERS_SEQUENTIAL:-100}
usage() { echo "$1" >&2; exit 2; }
workloads=()
listed=${BENCH_PEERS_WORKLOADS-noop team}
for workload in ${listed//,/ }; do
  workload=${workload,,}
  case $workload in
    noop | team) ;;
    *) usage "BENCH_PEERS_WORKLOADS takes 'noop' and 'team' (spaces or commas between them), not '$workload'" ;;
  esac
  for seen in "${workloads[@]}"; do
    [ "$seen" != "$workload" ] || usage "BENCH_PEERS_WORKLOADS names '$workload' twice"
  done
  workloads+=("$workload")
done
[ "${#workloads[@]}" -gt 0 ] || usage "BENCH_PEERS_WORKLOADS names no workload: 'noop', 'team' or both"
for setting in executions steps rounds sequential; do
  value=${!setting}
  [[ $value =~ ^[1-9][0-9]*$ ]] || usage "the number of $setting must be a whole number above 0, not '$value'"
done

if [ -n "${NATS_SERVER_BIN:-}" ] && "$NATS_SERVER_BIN" --version >/dev/null 2>&1; then
  CADRE_ADMIN_DATABASE_URL=$(bash scripts/ensure-postgres.sh)
  export CADRE_ADMIN_DATABASE_URL
else
  source scripts/services-env.sh
fi

# Restate's server, exactly as package-lock.json pins it (its telemetry install script not run).
server_dir=.cadre/restate-server
if ! cmp -s bench/peers/restate/server/package-lock.json "$server_dir/package-lock.json"; then
  echo "installing Restate's server under $server_dir" >&2
  rm -rf "$server_dir" && mkdir -p "$server_dir"
  cp bench/peers/restate/server/package.json bench/peers/restate/server/package-lock.json "$server_dir/"
  (cd "$server_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
fi
RESTATE_SERVER_BIN=$(cd "$server_dir" && node -p \
  "require.resolve('@restatedev/restate-server-' + process.platform + '-' + process.arch + '/bin/restate-server')")
export RESTATE_SERVER_BIN

echo "building both (release)" >&2
cargo build --release --locked -q -p cadre-tests --bin cadre-bench
cargo build --release --locked -q --manifest-path bench/peers/restate/Cargo.toml
cadre_bin=${CARGO_TARGET_DIR:-target}/release/cadre-bench
restate_bin=${CARGO_TARGET_DIR:-bench/peers/restate/target}/release/cadre-peer-restate

logs=.cadre/bench-peers/$(date +%Y%m%d-%H%M%S)
mkdir -p "$logs"
# Each run in its own process group, so that an interrupt stops it with whatever it started
# (nats-server, restate-server); the Restate driver removes its server's data itself.
child=
stop() {
  if [ -n "$child" ]; then kill -TERM -- "-$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  exit 130
}
trap stop INT TERM

# run NAME MODE N BINARY [WORKLOAD]: runs one measurement, prints its output, sets $result to
# its figure.
run() {
  local name=$1 mode=$2 n=$3 bin=$4 workload=${5:-} log="$logs/$1.log"
  echo "== $name" >&2
  BENCH_WORKLOAD=$workload BENCH_MODE=$mode BENCH_EXECUTIONS=$n BENCH_STEPS=$steps \
    setsid "$bin" >"$log" 2>&1 &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=
  sed 's/^/   /' "$log" >&2
  result=$(sed -n 's/^result: [a-z_]*=\([0-9.]*\)$/\1/p' "$log" | tail -1)
  if [ "$status" -ne 0 ] || [ -z "$result" ]; then result=-; fi
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

# measure PEER MEASURE MODE N: runs PEER (restate, or Cadre on each workload) and sets
# figure_<peer>_<measure> (figure_cadre_noop_throughput, ...).
measure() {
  local peer=$1 measure=$2 mode=$3 n=$4 workload
  if [ "$peer" = restate ]; then
    run "round$round-restate-$measure" "$mode" "$n" "$restate_bin"
    printf -v "figure_restate_$measure" '%s' "$result"
    return
  fi
  # Odd rounds run the workloads in the order listed, even rounds in reverse, so that no
  # workload always runs right after Restate or always on a machine warmed by the other.
  local order=("${workloads[@]}") i
  if [ $((round % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#workloads[@]} - 1; i >= 0; i--)); do order+=("${workloads[i]}"); done
  fi
  for workload in "${order[@]}"; do
    run "round$round-cadre-$workload-$measure" "$mode" "$n" "$cadre_bin" "$workload"
    printf -v "figure_cadre_${workload}_$measure" '%s' "$result"
  done
}

throughput_rows=() low_load_rows=()
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then order="cadre restate"; else order="restate cadre"; fi
  for peer in $order; do measure "$peer" throughput run "$executions"; done
  for peer in $order; do measure "$peer" low_load sequential "$sequential"; done
  for measure in throughput low_load; do
    restate_figure_name="figure_restate_$measure"
    row="$round|${!restate_figure_name}"
    for workload in "${workloads[@]}"; do
      cadre_figure_name="figure_cadre_${workload}_$measure"
      row+="|${!cadre_figure_name}|$(ratio "${!cadre_figure_name}" "${!restate_figure_name}")"
    done
    if [ "$measure" = throughput ]; then throughput_rows+=("$row"); else low_load_rows+=("$row"); fi
  done
done

# table TITLE UNIT ROWS...: one line per round: Restate's figure, then Cadre's and the ratio
# for each workload.
table() {
  local title=$1 unit=$2 row
  shift 2
  echo "$title"
  local header
  header=$(printf '%-6s %14s' round "restate $unit")
  for workload in "${workloads[@]}"; do
    header+=$(printf ' %16s %7s' "cadre $workload $unit" ratio)
  done
  echo "$header"
  for row in "$@"; do
    IFS='|' read -r -a cells <<<"$row"
    local line
    line=$(printf '%-6s %14s' "${cells[0]}" "${cells[1]}")
    for ((i = 2; i < ${#cells[@]}; i += 2)); do
      line+=$(printf ' %16s %7s' "${cells[i]}" "${cells[i + 1]}")
    done
    echo "$line"
  done
}

echo
echo "Cadre vs Restate: $executions executions x $steps steps (throughput), $sequential executions one at a time (low load), $(nproc) cores"
echo "$($RESTATE_SERVER_BIN --version), restate-sdk $(sed -n 's/^restate-sdk = { version = "=\([^"]*\)".*/\1/p' bench/peers/restate/Cargo.toml); full output in $logs/"
for workload in "${workloads[@]}"; do
  case $workload in
    noop) echo "Cadre noop: each step's answer a ~200 B output and nothing else (the peer's workload)" ;;
    team) echo "Cadre team: each step shares knowledge and raises a concern (make bench's default)" ;;
  esac
done
echo
table "throughput (steps/s; ratio = Cadre / Restate, above 1 is Cadre ahead)" "st/s" "${throughput_rows[@]}"
echo
table "low load (ms per step, one execution at a time; ratio = Cadre / Restate, below 1 is Cadre ahead)" "ms/st" "${low_load_rows[@]}"
