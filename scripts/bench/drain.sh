#!/usr/bin/env bash
# Benchmark: draining a backlog of committed changes, walcast next to its
# two natural ceilings, side by side in one run.
#
#   scripts/bench/drain.sh            # BENCH_ROWS changes (default 200000)
#
# Commits BENCH_ROWS changes to `orders` (transactions of 10: 5 inserts,
# 3 updates and 2 deletes of rows of the previous transaction; REPLICA
# IDENTITY FULL, as sql/schema.sql sets it) while every slot below already
# exists, so each slot holds the same backlog. Then, BENCH_DRAIN_ROUNDS
# times (default 3) in this order:
#   (a) pg_recvlogical reads the backlog from its own slot (pgoutput,
#       proto_version 1) to /dev/null, until the WAL position at the end of
#       the backlog (--endpos);
#   (c) walcast run --role capture (release build) with a durable queue
#       bound to its exchange, from process start until Postgres reports
#       the slot confirmed at that position (status interval 100 ms);
#   (b) examples/bench_amqp: a plain lapin publisher sending the same number
#       of persistent messages of walcast's average body size (measured from
#       walcast's queue in (c)) with publisher confirms, pipelined, with
#       walcast's publish window (1024), to an exchange with a bound durable
#       queue.
# Prints the median rate of each and walcast's rate as a fraction of
# min(a, b) (median of the per-round fractions).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rows="${BENCH_ROWS:-200000}"
rounds="${BENCH_DRAIN_ROUNDS:-3}"
window="${WALCAST_RABBITMQ_PUBLISH_WINDOW:-1024}"
per_txn=10 inserts=5 updates=3 # deletes = inserts - updates
txns=$(( (rows - inserts) / per_txn ))
[ "$txns" -ge 1 ] || { log "BENCH_ROWS must be at least 15"; exit 2; }
changes=$(( inserts + txns * per_txn ))

bash scripts/ensure-services.sh >/dev/null 2>&1
bench_build

db="walcast_bench_drain_$$"
url="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/$db"
pub="$db"
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  drop_slots "${db}\_%"
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  local ex=() qs=()
  for r in $(seq 1 "$rounds"); do
    ex+=(--exchange "walcast.bench.drain.$$.w$r" --exchange "walcast.bench.drain.$$.l$r")
    qs+=(--queue "walcast.bench.drain.$$.w$r" --queue "walcast.bench.drain.$$.l$r")
  done
  "$amqp_tool" --url "$amqp_url" delete "${ex[@]}" "${qs[@]}" >/dev/null 2>&1
}
trap cleanup EXIT

psql "$admin" -qc "CREATE DATABASE $db"
"$bin" --database-url "$url" --publication "$pub" setup --no-slot >/dev/null
for r in $(seq 1 "$rounds"); do
  psql "$url" -qAtc "SELECT pg_create_logical_replication_slot('${db}_w$r', 'pgoutput'), pg_create_logical_replication_slot('${db}_r$r', 'pgoutput')" >/dev/null
done

log "committing $changes changes ($txns transactions of $per_txn) …"
gen_start=$(now)
psql "$url" -q -v ON_ERROR_STOP=1 <<SQL
SET synchronous_commit = off;
INSERT INTO orders (id, customer_name, product_name)
  SELECT g, 'Customer ' || g, 'Product ' || (g % 97) FROM generate_series(1, $inserts) g;
DO \$\$
DECLARE
  base bigint;
BEGIN
  FOR j IN 1..$txns LOOP
    base := j * $inserts;
    INSERT INTO orders (id, customer_name, product_name)
      SELECT g, 'Customer ' || g, 'Product ' || (g % 97) FROM generate_series(base + 1, base + $inserts) g;
    UPDATE orders SET status = 'shipped' WHERE id BETWEEN base - $inserts + 1 AND base - $inserts + $updates;
    DELETE FROM orders WHERE id BETWEEN base - $inserts + $updates + 1 AND base;
    COMMIT;
  END LOOP;
END
\$\$;
SQL
endpos=$(psql "$url" -Atc "SELECT pg_current_wal_lsn()")
backlog=$(psql "$url" -Atc "SELECT pg_size_pretty(pg_wal_lsn_diff('$endpos', restart_lsn)) FROM pg_replication_slots WHERE slot_name = '${db}_w1'")
log "backlog committed in $(awk -v s="$gen_start" -v e="$(now)" 'BEGIN {printf "%.1f", e - s}') s: $backlog of WAL up to $endpos"

rates_a=() rates_b=() rates_c=() fractions=() sizes=() hwms=()
for r in $(seq 1 "$rounds"); do
  # (a) pg_recvlogical
  start=$(now)
  pg_recvlogical -d "$url" --slot "${db}_r$r" --start --endpos "$endpos" \
    -o proto_version=1 -o "publication_names=$pub" -F 0 -f /dev/null
  a=$(awk -v n="$changes" -v s="$start" -v e="$(now)" 'BEGIN {printf "%.0f", n / (e - s)}')

  # (c) walcast, capture role
  exchange="walcast.bench.drain.$$.w$r"
  "$amqp_tool" --url "$amqp_url" declare --exchange "$exchange" --queue "$exchange"
  start=$(now)
  RUST_LOG=warn WALCAST_POSTGRES_STATUS_INTERVAL_MS=100 \
    "$bin" --database-url "$url" --slot "${db}_w$r" --publication "$pub" \
    --rabbitmq-url "$amqp_url" --exchange "$exchange" --listen 127.0.0.1:0 \
    run --role capture &
  pid=$!
  pids+=("$pid")
  wait_slot "$url" "${db}_w$r" "$endpos" "$pid" 3600
  c=$(awk -v n="$changes" -v s="$start" -v e="$(now)" 'BEGIN {printf "%.0f", n / (e - s)}')
  hwms+=("$(peak_rss_kib "$pid")")
  kill -TERM "$pid"
  wait "$pid" || true
  read -r queued bytes < <(rabbitmqctl -q list_queues name messages message_bytes --no-table-headers 2>/dev/null |
    awk -v q="$exchange" '$1 == q {print $2, $3}')
  size=$(( bytes / (queued > 0 ? queued : 1) ))
  sizes+=("$size")
  [ "$queued" -ge "$changes" ] || log "round $r: walcast's queue holds $queued messages, expected $changes"
  "$amqp_tool" --url "$amqp_url" delete --exchange "$exchange" --queue "$exchange"

  # (b) plain lapin publisher, same count, size and window
  b=$("$amqp_tool" --url "$amqp_url" publish --exchange "walcast.bench.drain.$$.l$r" \
    --queue "walcast.bench.drain.$$.l$r" --count "$changes" --size "$size" --window "$window" |
    jq -r '.rate | floor')

  fraction=$(awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN {m = a < b ? a : b; printf "%.2f", c / m}')
  log "round $r: pg_recvlogical $a/s, lapin $b/s, walcast $c/s (${fraction} of min), body $size B"
  rates_a+=("$a") rates_b+=("$b") rates_c+=("$c") fractions+=("$fraction")
done

med() { printf '%s\n' "$@" | median; }
fmt() { printf '%.0f' "$1"; }
a=$(med "${rates_a[@]}") b=$(med "${rates_b[@]}") c=$(med "${rates_c[@]}")
fraction=$(med "${fractions[@]}")
hwm=$(med "${hwms[@]}")
printf '| backlog drain: pg_recvlogical → /dev/null (a) | %s changes/s | median of %d; %s changes, %s WAL |\n' \
  "$(fmt "$a")" "$rounds" "$(fmt "$changes")" "$backlog"
printf '| backlog drain: plain lapin, confirms (b) | %s msgs/s | median of %d; %s persistent msgs of %s B, window %s |\n' \
  "$(fmt "$b")" "$rounds" "$(fmt "$changes")" "${sizes[0]}" "$window"
printf '| backlog drain: walcast capture (c) | %s changes/s | median of %d; start → slot confirmed; peak RSS %.0f MiB |\n' \
  "$(fmt "$c")" "$rounds" "$(awk -v k="$hwm" 'BEGIN {print k / 1024}')"
printf '| backlog drain: walcast / min(a, b) | **%s** | goal ≥ 0.8; per round: %s |\n' \
  "$fraction" "${fractions[*]}"
