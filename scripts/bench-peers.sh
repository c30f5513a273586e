#!/usr/bin/env bash
# `make bench-peers`: Cadre and Restate side by side on the same workload, in one run.
# Restate is its published server (npm @restatedev/restate-server, pinned in
# bench/peers/restate/server/, installed under .cadre/) running a Workflow written with its
# Rust SDK (bench/peers/restate/), each step a no-op durable `ctx.run` returning ~200 B of JSON.
# Cadre is `make bench` on the offline provider at zero latency; its figures count only once
# every read model is projected. Each round runs, alternating which peer goes first:
#   throughput  BENCH_EXECUTIONS executions x BENCH_STEPS steps, all in flight -> steps/s
#   low load    BENCH_PEERS_SEQUENTIAL executions one at a time             -> ms per step
# and the table at the end gives each round's figures and the ratio Cadre / Restate.
# Settings:
#   BENCH_EXECUTIONS (1000), BENCH_STEPS (5)   the workload of both
#   BENCH_PEERS_ROUNDS (3)                     rounds
#   BENCH_PEERS_SEQUENTIAL (100)               executions of the low-load run
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

# run NAME MODE N BINARY: runs one measurement, prints its output, sets $result to its figure.
run() {
  local name=$1 mode=$2 n=$3 bin=$4 log="$logs/$1.log"
  echo "== $name" >&2
  BENCH_MODE=$mode BENCH_EXECUTIONS=$n BENCH_STEPS=$steps setsid "$bin" >"$log" 2>&1 &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=
  sed 's/^/   /' "$log" >&2
  result=$(sed -n 's/^result: [a-z_]*=\([0-9.]*\)$/\1/p' "$log" | tail -1)
  if [ "$status" -ne 0 ] || [ -z "$result" ]; then result=-; fi
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

rows=()
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then order="cadre restate"; else order="restate cadre"; fi
  for peer in $order; do
    bin=$cadre_bin; [ "$peer" = restate ] && bin=$restate_bin
    run "round$round-$peer-throughput" run "$executions" "$bin"
    printf -v "${peer}_throughput" '%s' "$result"
  done
  for peer in $order; do
    bin=$cadre_bin; [ "$peer" = restate ] && bin=$restate_bin
    run "round$round-$peer-low-load" sequential "$sequential" "$bin"
    printf -v "${peer}_low_load" '%s' "$result"
  done
  # shellcheck disable=SC2154 # set through printf -v above
  rows+=("$round|$cadre_throughput|$restate_throughput|$(ratio "$cadre_throughput" "$restate_throughput")|$cadre_low_load|$restate_low_load|$(ratio "$cadre_low_load" "$restate_low_load")")
done

echo
echo "Cadre vs Restate: $executions executions x $steps steps (throughput), $sequential executions one at a time (low load), $(nproc) cores"
echo "$($RESTATE_SERVER_BIN --version), restate-sdk $(sed -n 's/^restate-sdk = { version = "=\([^"]*\)".*/\1/p' bench/peers/restate/Cargo.toml); full output in $logs/"
printf '%-6s %14s %14s %8s   %14s %14s %8s\n' round "cadre steps/s" "restate st/s" "ratio" "cadre ms/step" "restate ms/st" "ratio"
for row in "${rows[@]}"; do
  IFS='|' read -r r ct rt tr cl rl lr <<<"$row"
  printf '%-6s %14s %14s %8s   %14s %14s %8s\n' "$r" "$ct" "$rt" "$tr" "$cl" "$rl" "$lr"
done
echo "ratio = Cadre / Restate: above 1 is Cadre ahead in steps/s, below 1 is Cadre ahead in ms per step."
