# Cadre's commands. `make demo` runs a workflow end to end; `make test` runs every check;
# `make bench` and `make bench-console` (the web console in Chromium under load) print figures.
.PHONY: demo test bench bench-console lint

demo:
	@bash scripts/demo.sh

test:
	@bash scripts/test.sh

bench:
	@bash scripts/bench.sh

bench-console:
	@bash scripts/bench-console.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
