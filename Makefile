# Cadre's commands. `make demo` runs a workflow end to end; `make test` runs every check;
# `make bench`, `make bench-console` (the web console in Chromium under load) and
# `make bench-peers` (Cadre and Restate side by side) and `make bench-scale` (throughput against
# the number of coordinator replicas, on a 3-node NATS cluster) print figures; `make chaos`
# injects faults (kills, pauses, poison messages, lost connections, a NATS node killed) under
# load and checks nothing is lost.
.PHONY: demo test bench bench-console bench-peers bench-scale chaos lint

demo:
	@bash scripts/demo.sh

test:
	@bash scripts/test.sh

bench:
	@bash scripts/bench.sh

bench-console:
	@bash scripts/bench-console.sh

# Cadre and Restate side by side on the same workload (see README, "Side by side with Restate").
bench-peers:
	@bash scripts/bench-peers.sh

# 1, 2 and 4 coordinators on a 3-node NATS cluster (see scripts/bench-scale.sh for settings).
bench-scale:
	@bash scripts/bench-scale.sh

# The fault suite (see README, "Fault suite"); CHAOS_PROFILE=short is the run `make test` does.
chaos:
	@bash scripts/chaos.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
