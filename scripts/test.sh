#!/usr/bin/env bash
# Every check Cadre has: formatting, lints, unit and property tests, end-to-end tests on a real
# NATS JetStream and a real Postgres, and the Kubernetes manifests. Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/services-env.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== kubernetes manifests"
bash scripts/validate-k8s.sh
echo "== cargo test"
cargo test --workspace --locked
