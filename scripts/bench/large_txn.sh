#!/usr/bin/env bash
# Benchmark: one transaction of N rows (default 1,000,000) through walcast
# (capture + gateway, release build) into RabbitMQ. Prints the time from
# commit until Postgres reports the slot confirmed past the commit (every
# event confirmed by RabbitMQ), and walcast's peak resident memory (VmHWM).
#
#   scripts/bench/large_txn.sh [ROWS] [update]
# With "update" as the second argument it inserts the rows first (before the
# slot exists, so walcast does not have to drain them), then measures one
# UPDATE of all of them (REPLICA IDENTITY FULL: old + new rows).
# Prints one markdown row | benchmark | result | details | (scripts/bench.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
. scripts/env.sh
rows="${1:-1000000}"
mode="${2:-insert}"
bash scripts/ensure-services.sh >/dev/null 2>&1
[ "${BENCH_NO_BUILD:-0}" = 1 ] || cargo build --release --quiet --bin walcast --example bench_amqp
bin="$root/target/release/walcast"
amqp_tool="$root/target/release/examples/bench_amqp"

db="walcast_bench_large_$$"
admin="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/postgres"
url="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/$db"
exchange="walcast.bench.large.$$"
queue="walcast.bench.large.gateway.$$"
psql "$admin" -qc "CREATE DATABASE $db"
cleanup() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  psql "$admin" -qc "SELECT pg_drop_replication_slot('$db') FROM pg_replication_slots WHERE slot_name = '$db'" >/dev/null 2>&1 || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  "$amqp_tool" --url "$WALCAST_TEST_AMQP_URL" delete --exchange "$exchange" --queue "$queue" >/dev/null 2>&1 || true
}
trap cleanup EXIT
common=(--database-url "$url" --slot "$db" --publication "$db" --exchange "$exchange")
if [ "$mode" = update ]; then
  "$bin" "${common[@]}" setup --no-slot >/dev/null
  psql "$url" -qc "INSERT INTO orders (customer_name, product_name) SELECT 'customer ' || g, 'product ' || g FROM generate_series(1, $rows) g"
fi
"$bin" "${common[@]}" setup >/dev/null
WALCAST_RABBITMQ_QUEUE="$queue" WALCAST_POSTGRES_STATUS_INTERVAL_MS=200 RUST_LOG=warn "$bin" "${common[@]}" --listen 127.0.0.1:0 run --role capture,gateway &
pid=$!
sleep 2
if [ "$mode" = update ]; then
  # Let walcast drain the inserts first.
  target=$(psql "$url" -Atc "SELECT pg_current_wal_lsn()")
  until [ "$(psql "$url" -Atc "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = '$db'")" = t ]; do sleep 0.5; done
  sql="UPDATE orders SET status = 'shipped'"
else
  sql="INSERT INTO orders (customer_name, product_name) SELECT 'customer ' || g, 'product ' || g FROM generate_series(1, $rows) g"
fi
baseline=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
start=$(date +%s.%N)
psql "$url" -qc "$sql"
committed=$(date +%s.%N)
target=$(psql "$url" -Atc "SELECT pg_current_wal_lsn()")
until [ "$(psql "$url" -Atc "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = '$db'")" = t ]; do
  kill -0 "$pid" || { echo "walcast died" >&2; exit 1; }
  sleep 0.2
done
done_at=$(date +%s.%N)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
awk -v rows="$rows" -v mode="$mode" -v s="$start" -v c="$committed" -v d="$done_at" -v hwm="$hwm" -v base="$baseline" 'BEGIN {
  printf "| large transaction: one %d-row %s | commit → slot confirmed %.1f s (%.0f changes/s) | the statement took %.1f s; walcast peak RSS %.1f MiB (%.1f MiB before) |\n",
    rows, toupper(mode), d - c, rows / (d - c), c - s, hwm / 1024, base / 1024 }'
