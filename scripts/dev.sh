#!/usr/bin/env bash
# Starts the whole system on this machine, without Docker: PostgreSQL with
# wal_level=logical (cluster "walcast", port 5433), RabbitMQ, and walcast
# (capture + gateway + API + dashboard) on http://127.0.0.1:8080/.
# Idempotent; Ctrl-C stops walcast and whatever this script started.
#
#   scripts/dev.sh                  # build (release) and run
#   WALCAST_DEV_PROFILE=debug scripts/dev.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/env.sh
. scripts/env.sh

log() { printf '[dev] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

# What is running before we start, so Ctrl-C stops only what we started.
pg_was_up=no
if command -v pg_lsclusters >/dev/null 2>&1 &&
   pg_lsclusters -h 2>/dev/null | awk -v c="$WALCAST_PG_CLUSTER" '$2==c && $4=="online" {f=1} END {exit !f}'; then
  pg_was_up=yes
fi
mq_was_up=no
if command -v rabbitmqctl >/dev/null 2>&1 && rabbitmqctl -q status >/dev/null 2>&1; then
  mq_was_up=yes
fi

bash scripts/ensure-services.sh

db="${WALCAST_DEV_DB:-walcast}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/${db}}"
export RABBITMQ_URL="${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# Browsers' replay history survives a restart of walcast.
export WALCAST_FANOUT_REPLAY_DIR="${WALCAST_FANOUT_REPLAY_DIR:-$root/.walcast/replay}"
export WALCAST_RABBITMQ_QUEUE="${WALCAST_RABBITMQ_QUEUE:-walcast.gateway.dev}"
if [ "$(psql -h 127.0.0.1 -p "$WALCAST_PG_PORT" -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != "1" ]; then
  log "creating database $db"
  psql -h 127.0.0.1 -p "$WALCAST_PG_PORT" -U postgres -qc "CREATE DATABASE \"$db\""
fi

profile="${WALCAST_DEV_PROFILE:-release}"
log "building walcast ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --quiet
  bin="target/release/walcast"
else
  cargo build --quiet
  bin="target/debug/walcast"
fi

"$bin" setup --sample-data

cleanup() {
  trap - INT TERM EXIT
  if [ -n "${walcast_pid:-}" ] && kill -0 "$walcast_pid" 2>/dev/null; then
    kill -TERM "$walcast_pid" 2>/dev/null || true
    wait "$walcast_pid" 2>/dev/null || true
  fi
  if [ "$mq_was_up" = no ]; then
    log "stopping rabbitmq (started by dev.sh)"
    rabbitmqctl -q stop >/dev/null 2>&1 || true
  fi
  if [ "$pg_was_up" = no ]; then
    log "stopping postgres cluster $WALCAST_PG_VERSION/$WALCAST_PG_CLUSTER (started by dev.sh)"
    pg_ctlcluster --skip-systemctl-redirect "$WALCAST_PG_VERSION" "$WALCAST_PG_CLUSTER" stop || true
  fi
}
trap cleanup INT TERM EXIT

listen="${WALCAST_HTTP_LISTEN:-127.0.0.1:8080}"
"$bin" run --listen "$listen" &
walcast_pid=$!
log "walcast is starting: dashboard at http://$listen/ (psql: psql $DATABASE_URL)"
log "press Ctrl-C to stop"
wait "$walcast_pid"
