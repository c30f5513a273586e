# Cadre's commands. `make demo` runs a workflow end to end; `make test` runs every check.
.PHONY: demo test bench lint

demo:
	@bash scripts/demo.sh

test:
	@bash scripts/test.sh

bench:
	@bash scripts/bench.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
