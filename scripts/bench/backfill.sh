#!/usr/bin/env bash
# Benchmark: `walcast backfill` of N existing rows (default 1,000,000)
# through a running walcast (capture + gateway, release build, as the
# large-transaction benchmark runs it; BENCH_ROLES=capture for the capture
# alone, whose events then have no queue) into RabbitMQ. The rows are inserted
# before the slot exists, so only the backfill carries them. Prints the
# backfill's wall time (until the capture confirmed the last chunk), the
# rows/s, and walcast's peak resident memory (VmHWM) read afterwards.
#
#   scripts/bench/backfill.sh [ROWS] [CHUNK]
# BENCH_MODE=txn measures the reference instead: the same rows changed by
# one UPDATE (the large-transaction benchmark's statement), same process.
# Prints one markdown row | benchmark | result | details | (scripts/bench.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
. scripts/env.sh
rows="${1:-1000000}"
chunk="${2:-1000}"
bash scripts/ensure-services.sh >/dev/null 2>&1
[ "${BENCH_NO_BUILD:-0}" = 1 ] || cargo build --release --quiet --bin walcast --example bench_amqp
bin="${BENCH_WALCAST_BIN:-$root/target/release/walcast}"
amqp_tool="${BENCH_AMQP_TOOL:-$root/target/release/examples/bench_amqp}"

db="walcast_bench_backfill_$$"
admin="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/postgres"
url="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/$db"
exchange="walcast.bench.backfill.$$"
queue="walcast.bench.backfill.gateway.$$"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
psql "$admin" -qc "CREATE DATABASE $db"
cleanup() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  psql "$admin" -qc "SELECT pg_drop_replication_slot('$db') FROM pg_replication_slots WHERE slot_name = '$db'" >/dev/null 2>&1 || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  "$amqp_tool" --url "$WALCAST_TEST_AMQP_URL" delete --exchange "$exchange" --queue "$queue" >/dev/null 2>&1 || true
}
trap cleanup EXIT
common=(--database-url "$url" --slot "$db" --publication "$db" --exchange "$exchange")
"$bin" "${common[@]}" setup --no-slot >/dev/null
psql "$url" -qc "INSERT INTO orders (customer_name, product_name) SELECT 'customer ' || g, 'product ' || g FROM generate_series(1, $rows) g"
"$bin" "${common[@]}" setup >/dev/null
WALCAST_RABBITMQ_QUEUE="$queue" WALCAST_POSTGRES_STATUS_INTERVAL_MS=200 RUST_LOG=warn "$bin" "${common[@]}" --listen "127.0.0.1:$port" run --role "${BENCH_ROLES:-capture,gateway}" &
pid=$!
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]; do
  kill -0 "$pid" || { echo "walcast died while starting" >&2; exit 1; }
  sleep 0.1
done
baseline=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
start=$(date +%s.%N)
if [ "${BENCH_MODE:-backfill}" = txn ]; then
  # The reference: the same rows as one UPDATE (REPLICA IDENTITY FULL),
  # the large-transaction benchmark's statement, through the same process.
  psql "$url" -qc "UPDATE orders SET status = 'shipped'"
  target=$(psql "$url" -Atc "SELECT pg_current_wal_lsn()")
  until [ "$(psql "$url" -Atc "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = '$db'")" = t ]; do
    kill -0 "$pid" || { echo "walcast died" >&2; exit 1; }
    sleep 0.2
  done
else
  "$bin" "${common[@]}" backfill --chunk "$chunk" --timeout 600 >&2
fi
done_at=$(date +%s.%N)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
published=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^walcast_backfill_rows_total / {print $2}')
what="backfill: %d existing rows, chunks of $chunk"
[ "${BENCH_MODE:-backfill}" = txn ] && what="reference, same setup: one %d-row UPDATE"
awk -v what="$what" -v rows="$rows" -v chunk="$chunk" -v s="$start" -v d="$done_at" -v hwm="$hwm" -v base="$baseline" -v got="$published" -v roles="${BENCH_ROLES:-capture,gateway}" 'BEGIN {
  printf "| " what " | %.1f s until the slot was confirmed past the last change (%.0f rows/s) | walcast_backfill_rows_total %d; walcast (%s) peak RSS %.1f MiB (%.1f MiB before) |\n",
    rows, d - s, rows / (d - s), got, roles, hwm / 1024, base / 1024 }'
