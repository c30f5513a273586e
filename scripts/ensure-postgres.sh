#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers at $DATABASE_URL's host (default: 127.0.0.1:5432,
# user postgres). Reuses a running one; otherwise installs Debian's package and starts it.
# Prints the admin URL (a database to CREATE DATABASE from) on stdout.
set -euo pipefail
url=${CADRE_ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
answers() { pg_isready -q -d "$url" 2>/dev/null || (command -v psql >/dev/null && psql "$url" -Atqc 'select 1' >/dev/null 2>&1); }
if command -v pg_isready >/dev/null && answers; then
  echo "$url"; exit 0
fi
if ! command -v pg_ctlcluster >/dev/null; then
  echo "installing PostgreSQL from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /etc/postgresql | sort -n | tail -1)
pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
for _ in $(seq 1 30); do
  if runuser -u postgres -- psql -Atqc 'select 1' >/dev/null 2>&1; then break; fi
  sleep 1
done
# A fresh Debian cluster asks for a password over TCP: give postgres one the URL can carry.
if ! answers; then
  runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
  url=postgres://postgres:postgres@127.0.0.1:5432/postgres
fi
answers || { echo "PostgreSQL does not answer at $url" >&2; exit 1; }
echo "$url"
