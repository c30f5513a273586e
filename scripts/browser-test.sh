#!/usr/bin/env bash
# The web console in a real browser: Debian's Chromium driven by Playwright (PyPI), both
# installed here when missing (Playwright's own browser download is never used). Starts a test
# stack (cadre-console-stack: the services in-process on a private NATS and a fresh database),
# runs tests/browser/console_test.py against it, and prints page load times and the delay from
# an event in the log to its change on the page. Screenshots: .cadre/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/browser-env.sh
source scripts/services-env.sh
cargo build --locked -q -p cadre-tests --bin cadre-console-stack
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac

mkdir -p .cadre/logs
log=.cadre/logs/console-stack.log
"$target/debug/cadre-console-stack" >"$log" 2>&1 &
stack=$!
trap 'kill -TERM "$stack" 2>/dev/null || true; wait "$stack" 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 600); do
  url=$(sed -n 's/^CONSOLE_URL=//p' "$log")
  [ -n "$url" ] && break
  kill -0 "$stack" 2>/dev/null || { echo "the test stack did not start:" >&2; bash scripts/log-excerpt.sh "$log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "the test stack did not start in time:" >&2; bash scripts/log-excerpt.sh "$log" >&2; exit 1; }
echo "console at $url/console"
timeout 300 python3 tests/browser/console_test.py "$url" .cadre/screenshots
