#!/usr/bin/env bash
# Starts the whole system on this machine, without Docker: PostgreSQL with
# wal_level=logical (cluster "walcast", port 5433), RabbitMQ, and walcast
# (capture + gateway + API + dashboard) on http://127.0.0.1:8080/.
# Debian or Ubuntu, as root, with a Rust toolchain (rustup); installs
# PostgreSQL and RabbitMQ from the distribution's packages when missing.
#
# Idempotent: a second run while one is running says where it is and exits.
# Ctrl-C (or a failed build) stops walcast and whatever this script started;
# services that were already running are left running.
#
#   scripts/dev.sh                  # build (release) and run
#   WALCAST_DEV_PROFILE=debug scripts/dev.sh
#   WALCAST_HTTP_LISTEN=127.0.0.1:9090 scripts/dev.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/env.sh
. scripts/env.sh

log() { printf '[dev] %s\n' "$*" >&2; }

# shellcheck source=scripts/cargo-env.sh
. scripts/cargo-env.sh

listen="${WALCAST_HTTP_LISTEN:-127.0.0.1:8080}"
# A dev stack without auth: allowed on a non-loopback listen address too.
export WALCAST_AUTH_ALLOW_ANONYMOUS="${WALCAST_AUTH_ALLOW_ANONYMOUS:-true}"
port="${listen##*:}"
host="${listen%:*}"
case "$host" in 0.0.0.0 | "[::]" | "") host=127.0.0.1 ;; esac
url="http://$host:$port/"
state_dir="$root/.walcast"
pidfile="$state_dir/dev.pid"

# GET a URL on this machine: prints the body; fails unless the status is 2xx.
http_get() {
  local out code
  if command -v curl >/dev/null 2>&1; then
    out=$(curl -sS --max-time 2 -w '\n%{http_code}' "$1") || return 1
    code="${out##*$'\n'}"
    printf '%s' "${out%$'\n'*}"
    [ "${code:0:1}" = 2 ]
    return
  fi
  local rest="${1#http://}" hostport path status
  hostport="${rest%%/*}"; path="/${rest#*/}"
  exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
  IFS= read -r status <&3 || { exec 3<&-; return 1; }
  sed '1,/^\r\{0,1\}$/d' <&3
  exec 3<&-
  case "$status" in "HTTP/"*" 2"*) return 0 ;; *) return 1 ;; esac
}

# Already running (a previous dev.sh)? Say so and leave it alone.
if [ -f "$pidfile" ]; then
  read -r old_pid old_url < "$pidfile" || true
  if [ -n "${old_pid:-}" ] && kill -0 "$old_pid" 2>/dev/null &&
     tr '\0' ' ' < "/proc/$old_pid/cmdline" 2>/dev/null | grep -q 'walcast'; then
    log "walcast is already running (pid $old_pid): dashboard at $old_url"
    log "stop it with Ctrl-C in its terminal, or: kill $old_pid"
    exit 0
  fi
  rm -f "$pidfile"
fi
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  log "something else already listens on $host:$port; choose another address with"
  log "  WALCAST_HTTP_LISTEN=127.0.0.1:9090 scripts/dev.sh"
  exit 1
fi

# What is running before we start anything, so that cleanup stops only what
# this script started.
pg_was_up=no
if command -v pg_lsclusters >/dev/null 2>&1 &&
   pg_lsclusters -h 2>/dev/null |
     awk -v v="$WALCAST_PG_VERSION" -v c="$WALCAST_PG_CLUSTER" '$1==v && $2==c && $4=="online" {f=1} END {exit !f}'; then
  pg_was_up=yes
fi
mq_was_up=no
if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  mq_was_up=yes
fi

walcast_pid=""
cleanup() {
  local status=$?
  trap - INT TERM EXIT
  if [ -n "$walcast_pid" ] && kill -0 "$walcast_pid" 2>/dev/null; then
    log "stopping walcast (pid $walcast_pid)"
    kill -TERM "$walcast_pid" 2>/dev/null || true
    wait "$walcast_pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  if [ "$mq_was_up" = no ] && command -v rabbitmqctl >/dev/null 2>&1 &&
     (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    log "stopping rabbitmq (started by dev.sh)"
    rabbitmqctl -q stop >/dev/null 2>&1 || true
  fi
  if [ "$pg_was_up" = no ] && command -v pg_ctlcluster >/dev/null 2>&1 &&
     pg_lsclusters -h 2>/dev/null |
       awk -v v="$WALCAST_PG_VERSION" -v c="$WALCAST_PG_CLUSTER" '$1==v && $2==c && $4=="online" {f=1} END {exit !f}'; then
    log "stopping postgres cluster $WALCAST_PG_VERSION/$WALCAST_PG_CLUSTER (started by dev.sh)"
    pg_ctlcluster --skip-systemctl-redirect "$WALCAST_PG_VERSION" "$WALCAST_PG_CLUSTER" stop || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Only what walcast needs: no test clusters, no test roles.
bash scripts/ensure-services.sh --dev
# ensure-services may have installed PostgreSQL: the version may be new.
# shellcheck source=scripts/env.sh
. scripts/env.sh

db="${WALCAST_DEV_DB:-walcast}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/${db}}"
export RABBITMQ_URL="${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# Browsers' replay history survives a restart of walcast.
export WALCAST_FANOUT_REPLAY_DIR="${WALCAST_FANOUT_REPLAY_DIR:-$state_dir/replay}"
export WALCAST_RABBITMQ_QUEUE="${WALCAST_RABBITMQ_QUEUE:-walcast.gateway.dev}"
if [ "$(psql -h 127.0.0.1 -p "$WALCAST_PG_PORT" -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != "1" ]; then
  log "creating database $db"
  psql -h 127.0.0.1 -p "$WALCAST_PG_PORT" -U postgres -qc "CREATE DATABASE \"$db\""
fi

profile="${WALCAST_DEV_PROFILE:-release}"
log "building walcast ($profile; the first build takes a few minutes)"
if [ "$profile" = release ]; then
  cargo build --release --quiet
  bin="target/release/walcast"
else
  cargo build --quiet
  bin="target/debug/walcast"
fi

"$bin" setup --sample-data

"$bin" run --listen "$listen" &
walcast_pid=$!
mkdir -p "$state_dir"
printf '%s %s\n' "$walcast_pid" "$url" > "$pidfile"

log "walcast is starting (pid $walcast_pid); waiting for ${url}readyz"
waited=0
until body=$(http_get "${url}readyz" 2>/dev/null); do
  body=$(printf '%s' "$body" | tr -s ' \n' ' ' | cut -c1-200)
  if ! kill -0 "$walcast_pid" 2>/dev/null; then
    wait "$walcast_pid" && rc=0 || rc=$?
    walcast_pid=""
    log "walcast exited (status $rc) before it was ready: see its log above"
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
  if [ $((waited % 5)) -eq 0 ]; then
    log "still waiting for readiness (${waited}s): ${body:-no answer yet}"
  fi
done
log "ready: dashboard at $url"
log "  API: ${url}orders   metrics: ${url}metrics   psql: psql $DATABASE_URL"
log "press Ctrl-C to stop"
wait "$walcast_pid"
