#!/usr/bin/env bash
# Benchmark: one transaction of N rows (default 1,000,000) through walcast
# (capture + gateway, release build) into RabbitMQ and out to one Socket.IO
# client (examples/bench_sio.rs, connected before the statement). Prints the
# time from commit until Postgres reports the slot confirmed past the commit
# (every event confirmed by RabbitMQ), until the client has received all N
# changes, and walcast's peak resident memory (VmHWM) read after that: the
# whole path, capture to socket, not just the capture half.
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
[ "${BENCH_NO_BUILD:-0}" = 1 ] || cargo build --release --quiet --bin walcast --example bench_amqp --example bench_sio
# BENCH_WALCAST_BIN runs another build of walcast (e.g. an older commit's).
bin="${BENCH_WALCAST_BIN:-$root/target/release/walcast}"
amqp_tool="$root/target/release/examples/bench_amqp"
sio_tool="$root/target/release/examples/bench_sio"

db="walcast_bench_large_$$"
admin="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/postgres"
url="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/$db"
exchange="walcast.bench.large.$$"
queue="walcast.bench.large.gateway.$$"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
psql "$admin" -qc "CREATE DATABASE $db"
cleanup() {
  [ -n "${client_pid:-}" ] && kill -TERM "$client_pid" 2>/dev/null || true
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
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
WALCAST_RABBITMQ_QUEUE="$queue" WALCAST_POSTGRES_STATUS_INTERVAL_MS=200 RUST_LOG=warn "$bin" "${common[@]}" --listen "127.0.0.1:$port" run --role capture,gateway &
pid=$!
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]; do
  kill -0 "$pid" || { echo "walcast died while starting" >&2; exit 1; }
  sleep 0.1
done
if [ "$mode" = update ]; then
  # Let walcast drain the inserts first.
  target=$(psql "$url" -Atc "SELECT pg_current_wal_lsn()")
  until [ "$(psql "$url" -Atc "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = '$db'")" = t ]; do sleep 0.5; done
  sql="UPDATE orders SET status = 'shipped'"
else
  sql="INSERT INTO orders (customer_name, product_name) SELECT 'customer ' || g, 'product ' || g FROM generate_series(1, $rows) g"
fi
baseline=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
# The statement runs as bench_sio's load, once its socket is connected;
# the load records when it started and committed. bench_sio then waits
# until the socket has all $rows changes (or BENCH_LARGE_DRAIN_MS passes).
cat > "$work/load.sh" <<LOAD
#!/usr/bin/env bash
set -euo pipefail
date +%s.%N > "$work/start"
psql "$url" -qc "$sql"
date +%s.%N > "$work/committed"
echo '{"committed": $rows}'
LOAD
chmod +x "$work/load.sh"
options=$(jq -cn --arg url "http://127.0.0.1:$port" --arg load "$work/load.sh" --argjson pid "$pid" \
  --argjson drain "${BENCH_LARGE_DRAIN_MS:-1800000}" \
  '{url: $url, groups: [{name: "client", count: 1, sampleEvery: 1000}], load: [$load], drainMs: $drain, serverPid: $pid}')
"$sio_tool" "$options" > "$work/summary" &
client_pid=$!
until [ -s "$work/committed" ]; do
  kill -0 "$client_pid" 2>/dev/null || { echo "bench_sio ended before the statement committed" >&2; exit 1; }
  sleep 0.2
done
start=$(cat "$work/start")
committed=$(cat "$work/committed")
target=$(psql "$url" -Atc "SELECT pg_current_wal_lsn()")
until [ "$(psql "$url" -Atc "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = '$db'")" = t ]; do
  kill -0 "$pid" || { echo "walcast died" >&2; exit 1; }
  sleep 0.2
done
done_at=$(date +%s.%N)
wait "$client_pid"
client_pid=
delivered_at=$(date +%s.%N)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
received=$(jq '.groups[0].received' "$work/summary")
disconnects=$(jq '.groups[0].disconnects' "$work/summary")
echo "bench_sio: $(jq -c '{serverKiB, groups: [.groups[0] | {connected, received, expected, disconnects, spanMs}]}' "$work/summary")" >&2
# The client is done once it has everything, so its end is the delivery
# time (to within its 50 ms poll); with fewer, the row says so.
awk -v rows="$rows" -v mode="$mode" -v s="$start" -v c="$committed" -v d="$done_at" -v e="$delivered_at" \
    -v hwm="$hwm" -v base="$baseline" -v got="$received" -v drops="$disconnects" 'BEGIN {
  printf "| large transaction: one %d-row %s | commit → slot confirmed %.1f s (%.0f changes/s); → all at the Socket.IO client %.1f s | the statement took %.1f s; the client received %d of %d changes (%d disconnects); walcast peak RSS %.1f MiB (%.1f MiB before), read after delivery |\n",
    rows, toupper(mode), d - c, rows / (d - c), e - c, c - s, got, rows, drops, hwm / 1024, base / 1024 }'
