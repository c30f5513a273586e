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
# Builds check SQL against .sqlx/ (offline); this checks .sqlx/ against the migrated schema.
echo "== sqlx query data"
sqlx_version=$(awk '/^name = "sqlx"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [ "$(cargo sqlx --version 2>/dev/null | awk '{print $2}')" != "$sqlx_version" ]; then
  cargo install sqlx-cli --locked --version "$sqlx_version" --no-default-features --features postgres,rustls
fi
# A name of its own, so two runs on one Postgres do not drop each other's database.
sqlx_db="${CADRE_ADMIN_DATABASE_URL%/*}/cadre_sqlx_check_$$"
cargo sqlx database drop -y -f -D "$sqlx_db" >/dev/null
trap 'cargo sqlx database drop -y -f -D "$sqlx_db" >/dev/null' EXIT
cargo sqlx database create -D "$sqlx_db"
cargo sqlx migrate run --source services/projector/migrations -D "$sqlx_db" >/dev/null
cargo sqlx prepare --workspace --check -D "$sqlx_db" -- --all-targets --locked
echo "== kubernetes manifests"
bash scripts/validate-k8s.sh
echo "== cargo test"
cargo test --workspace --locked
# A short run of the fault suite: one round of the faults that need no ack wait to expire.
echo "== fault suite (short)"
CHAOS_PROFILE=short bash scripts/chaos.sh
# The API's contract: every operation of /openapi.json fuzzed on a live stack.
echo "== API contract (schemathesis)"
bash scripts/schemathesis.sh
echo "== web console in a browser"
bash scripts/browser-test.sh
