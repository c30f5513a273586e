# Sourced by the scripts that run Cadre against real servers: installs a current nats-server and
# makes sure PostgreSQL answers, then exports where the test harness finds them.
bash scripts/ensure-nats.sh
CADRE_ADMIN_DATABASE_URL=$(bash scripts/ensure-postgres.sh)
export CADRE_ADMIN_DATABASE_URL
export NATS_SERVER_BIN="$PWD/.cadre/bin/nats-server"
