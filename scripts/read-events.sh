#!/usr/bin/env bash
# Reads a folder of Cadre's stored events with the CloudEvents Python SDK (PyPI `cloudevents`,
# pinned), as an independent subscriber would: see tests/subscribers/read_events.py. The SDK is
# installed in .cadre/venv-subscribers on first use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cadre/venv-subscribers"
spec='cloudevents==2.2.0'
stamp="$venv/.cadre-installed"
mkdir -p "$root/.cadre"
exec 9>"$root/.cadre/venv-subscribers.lock"
flock 9
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$spec" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec" >&2
  echo "$spec" >"$stamp"
fi
flock -u 9
exec "$venv/bin/python" "$root/tests/subscribers/read_events.py" "$@"
