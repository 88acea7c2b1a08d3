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
#       walcast's queue in (c)), with walcast's properties and its
#       x-walcast-source header (this database's system id, name and slot),
#       with publisher confirms, pipelined, with walcast's publish window
#       (1024), to an exchange with a bound durable queue.
#   (d) walcast run (all roles: capture, gateway, api; default settings,
#       release build) on its own slot, with its gateway queue declared
#       and bound beforehand (examples/bench_amqp declare --gateway), from
#       process start until its consumer has acked every change
#       (walcast_consumer_acked_total on /metrics) and Postgres reports the
#       slot confirmed at the end of the backlog: the whole pipeline,
#       WAL → decoder → publisher (confirms) → RabbitMQ → gateway consumer →
#       hub (fan-out and replay buffer) → ack;
#   (e) examples/bench_amqp pipeline: the same plain lapin publisher as (b)
#       (same count, walcast's mean body size, window) while a consumer on
#       its own connection consumes the same kind of queue as (d) with the
#       gateway's prefetch and ack policy, until the last message is acked:
#       what RabbitMQ itself takes to move these messages in and out.
# Prints the median rate of each, walcast's capture rate as a fraction of
# min(a, b), and the whole pipeline's as a fraction of (e) (medians of the
# per-round fractions), with the CPU time walcast (and the baseline client,
# and RabbitMQ) used per change; for (d) also the CPU time of the Postgres
# walsender that decoded the slot for walcast, which (e) does not need.
#
# BENCH_DRAIN_ONLY=pipeline runs only (d) and (e), for quick comparisons.
# BENCH_DRAIN_BARE_BASELINE=1 also runs (e) without the source header in
# every round (the baseline as it was before 2026-12-02's third sitting).
# BENCH_DRAIN_OTHER_BIN=path (and BENCH_DRAIN_OTHER_LABEL) runs (d) with a
# second build of walcast too, in every round right after the first one,
# on a slot of its own: a before/after comparison in one sitting.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rows="${BENCH_ROWS:-200000}"
rounds="${BENCH_DRAIN_ROUNDS:-3}"
window="${WALCAST_RABBITMQ_PUBLISH_WINDOW:-1024}"
prefetch="${WALCAST_RABBITMQ_PREFETCH:-1000}"
only="${BENCH_DRAIN_ONLY:-}"
other_bin="${BENCH_DRAIN_OTHER_BIN:-}"
other_label="${BENCH_DRAIN_OTHER_LABEL:-other build}"
bare="${BENCH_DRAIN_BARE_BASELINE:-0}"
case "$only" in
  "" | pipeline) ;;
  *) log "BENCH_DRAIN_ONLY must be empty or pipeline"; exit 2 ;;
esac
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
    for part in w l p o e; do
      ex+=(--exchange "walcast.bench.drain.$$.$part$r")
      qs+=(--queue "walcast.bench.drain.$$.$part$r")
    done
  done
  "$amqp_tool" --url "$amqp_url" delete "${ex[@]}" "${qs[@]}" >/dev/null 2>&1
}
trap cleanup EXIT

psql "$admin" -qc "CREATE DATABASE $db"
system_id=$(psql "$url" -Atc "SELECT system_identifier FROM pg_control_system()")
"$bin" --database-url "$url" --publication "$pub" setup --no-slot >/dev/null
for r in $(seq 1 "$rounds"); do
  psql "$url" -qAtc "SELECT pg_create_logical_replication_slot('${db}_w$r', 'pgoutput'), pg_create_logical_replication_slot('${db}_r$r', 'pgoutput'), pg_create_logical_replication_slot('${db}_p$r', 'pgoutput'), pg_create_logical_replication_slot('${db}_o$r', 'pgoutput')" >/dev/null
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

# walcast_run BIN SLOT EXCHANGE: (d) with BIN on SLOT; sets run_rate,
# run_cpu (CPU seconds), run_rabbit (RabbitMQ CPU seconds meanwhile),
# run_walsender (the CPU seconds of the Postgres walsender that decoded the
# slot for walcast: work the baseline (e) does not have) and run_hwm (peak
# RSS, KiB).
walcast_run() {
  local run_bin="$1" slot="$2" exchange="$3" port pid start delivered rabbit_before
  "$amqp_tool" --url "$amqp_url" declare --gateway --exchange "$exchange" --queue "$exchange"
  port=$(free_port)
  rabbit_before=$(cpu_seconds "$rabbit")
  start=$(now)
  RUST_LOG=warn WALCAST_POSTGRES_STATUS_INTERVAL_MS=100 WALCAST_RABBITMQ_QUEUE="$exchange" \
    "$run_bin" --database-url "$url" --slot "$slot" --publication "$pub" \
    --rabbitmq-url "$amqp_url" --exchange "$exchange" --listen "127.0.0.1:$port" \
    run &
  pid=$!
  pids+=("$pid")
  # One waiting process polls /metrics (a shell loop spawning curl, awk
  # and date per poll took 6-7 % of a 2-core machine from the run).
  "$amqp_tool" wait-metric --endpoint "127.0.0.1:$port" --metric walcast_consumer_acked_total \
    --at-least "$changes" --pid "$pid" --timeout-s 3600 \
    || { log "walcast run (pid $pid) did not ack $changes changes"; exit 1; }
  wait_slot "$url" "$slot" "$endpos" "$pid" 3600
  run_walsender=$(cpu_seconds "$(psql "$url" -Atc "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$slot'")" 2>/dev/null || echo 0)
  run_rate=$(awk -v n="$changes" -v s="$start" -v e="$(now)" 'BEGIN {printf "%.0f", n / (e - s)}')
  run_cpu=$(cpu_seconds "$pid")
  run_rabbit=$(awk -v a="$rabbit_before" -v b="$(cpu_seconds "$rabbit")" 'BEGIN {printf "%.2f", b - a}')
  run_hwm=$(peak_rss_kib "$pid")
  delivered=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 ~ /^walcast_fanout_delivered_total/ {n += $2} END {print n + 0}')
  [ "$delivered" -ge "$changes" ] || log "$run_bin: the hub took $delivered changes, expected $changes"
  kill -TERM "$pid"
  wait "$pid" || true
  "$amqp_tool" --url "$amqp_url" delete --exchange "$exchange" --queue "$exchange"
}

rates_a=() rates_b=() rates_c=() fractions=() sizes=() hwms=()
rates_d=() rates_e=() pipeline_fractions=() cpu_c=() cpu_d=() cpu_e=() rabbit_d=() rabbit_e=() hwms_d=()
rates_o=() cpu_o=() rabbit_o=() other_fractions=() walsender_d=() walsender_o=()
rates_e0=() cpu_e0=() rabbit_e0=() bare_fractions=()
rabbit=$(rabbit_pid)
# Until (c) has measured walcast's mean body size: the orders events of
# this workload are about 480 bytes.
size=480
for r in $(seq 1 "$rounds"); do
  if [ -z "$only" ]; then
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
    cpu_c+=("$(cpu_seconds "$pid")")
    kill -TERM "$pid"
    wait "$pid" || true
    read -r queued bytes < <(rabbitmqctl -q list_queues name messages message_bytes --no-table-headers 2>/dev/null |
      awk -v q="$exchange" '$1 == q {print $2, $3}')
    size=$(( bytes / (queued > 0 ? queued : 1) ))
    sizes+=("$size")
    [ "$queued" -ge "$changes" ] || log "round $r: walcast's queue holds $queued messages, expected $changes"
    "$amqp_tool" --url "$amqp_url" delete --exchange "$exchange" --queue "$exchange"

    # (b) plain lapin publisher, same count, size and window
    b=$("$amqp_tool" --url "$amqp_url" publish --source "$system_id/$db/${db}_w$r" --exchange "walcast.bench.drain.$$.l$r" \
      --queue "walcast.bench.drain.$$.l$r" --count "$changes" --size "$size" --window "$window" |
      jq -r '.rate | floor')

    fraction=$(awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN {m = a < b ? a : b; printf "%.2f", c / m}')
    log "round $r: pg_recvlogical $a/s, lapin $b/s, walcast $c/s (${fraction} of min), body $size B"
    rates_a+=("$a") rates_b+=("$b") rates_c+=("$c") fractions+=("$fraction")
  fi

  # (d) walcast run, all roles, default settings; the other build (if
  # any) first in every second round, so neither always goes first.
  if [ -n "$other_bin" ] && [ $((r % 2)) = 0 ]; then
    walcast_run "$other_bin" "${db}_o$r" "walcast.bench.drain.$$.o$r"
    rates_o+=("$run_rate") cpu_o+=("$run_cpu") rabbit_o+=("$run_rabbit") walsender_o+=("$run_walsender")
  fi
  walcast_run "$bin" "${db}_p$r" "walcast.bench.drain.$$.p$r"
  rates_d+=("$run_rate") cpu_d+=("$run_cpu") rabbit_d+=("$run_rabbit") hwms_d+=("$run_hwm") walsender_d+=("$run_walsender")
  if [ -n "$other_bin" ] && [ $((r % 2)) = 1 ]; then
    walcast_run "$other_bin" "${db}_o$r" "walcast.bench.drain.$$.o$r"
    rates_o+=("$run_rate") cpu_o+=("$run_cpu") rabbit_o+=("$run_rabbit") walsender_o+=("$run_walsender")
  fi

  # (e) plain lapin publisher + consumer on the same kind of queue
  rabbit_before=$(cpu_seconds "$rabbit")
  read -r e e_cpu < <("$amqp_tool" --url "$amqp_url" pipeline --source "$system_id/$db/${db}_p$r" \
    --exchange "walcast.bench.drain.$$.e$r" \
    --queue "walcast.bench.drain.$$.e$r" --count "$changes" --size "$size" --window "$window" \
    --prefetch "$prefetch" | jq -r '"\(.rate | floor) \(.cpu_seconds)"')
  rabbit_e+=("$(awk -v a="$rabbit_before" -v b="$(cpu_seconds "$rabbit")" 'BEGIN {printf "%.2f", b - a}')")
  cpu_e+=("$e_cpu")
  if [ "$bare" = 1 ]; then
    rabbit_before=$(cpu_seconds "$rabbit")
    read -r e0 e0_cpu < <("$amqp_tool" --url "$amqp_url" pipeline --exchange "walcast.bench.drain.$$.e$r" \
      --queue "walcast.bench.drain.$$.e$r" --count "$changes" --size "$size" --window "$window" \
      --prefetch "$prefetch" | jq -r '"\(.rate | floor) \(.cpu_seconds)"')
    rabbit_e0+=("$(awk -v a="$rabbit_before" -v b="$(cpu_seconds "$rabbit")" 'BEGIN {printf "%.2f", b - a}')")
    cpu_e0+=("$e0_cpu") rates_e0+=("$e0")
    bare_fractions+=("$(awk -v d="${rates_d[-1]}" -v e="$e0" 'BEGIN {printf "%.2f", d / e}')")
    log "round $r: publish + consume without the source header $e0/s (walcast run ${bare_fractions[-1]} of it); RabbitMQ ${rabbit_e0[-1]} CPU-s"
  fi

  d="${rates_d[-1]}"
  pipeline_fraction=$(awk -v d="$d" -v e="$e" 'BEGIN {printf "%.2f", d / e}')
  log "round $r: walcast run $d/s, lapin publish + consume $e/s (${pipeline_fraction}); walcast ${cpu_d[-1]} CPU-s, RabbitMQ ${rabbit_d[-1]} vs ${rabbit_e[-1]} CPU-s, walsender ${walsender_d[-1]} CPU-s"
  rates_e+=("$e") pipeline_fractions+=("$pipeline_fraction")
  if [ -n "$other_bin" ]; then
    other_fractions+=("$(awk -v d="${rates_o[-1]}" -v e="$e" 'BEGIN {printf "%.2f", d / e}')")
    log "round $r: $other_bin: ${rates_o[-1]}/s (${other_fractions[-1]}); ${cpu_o[-1]} CPU-s, RabbitMQ ${rabbit_o[-1]} CPU-s, walsender ${walsender_o[-1]} CPU-s"
  fi
done

med() { printf '%s\n' "$@" | median; }
fmt() { printf '%.0f' "$1"; }
# CPU microseconds per change.
per_change() { awk -v s="$1" -v n="$changes" 'BEGIN {printf "%.1f", s * 1e6 / n}'; }
if [ -z "$only" ]; then
  a=$(med "${rates_a[@]}") b=$(med "${rates_b[@]}") c=$(med "${rates_c[@]}")
  fraction=$(med "${fractions[@]}")
  hwm=$(med "${hwms[@]}")
  printf '| backlog drain: pg_recvlogical → /dev/null (a) | %s changes/s | median of %d; %s changes, %s WAL |\n' \
    "$(fmt "$a")" "$rounds" "$(fmt "$changes")" "$backlog"
  printf '| backlog drain: plain lapin, confirms (b) | %s msgs/s | median of %d; %s persistent msgs of %s B, window %s |\n' \
    "$(fmt "$b")" "$rounds" "$(fmt "$changes")" "${sizes[0]}" "$window"
  printf '| backlog drain: walcast capture (c) | %s changes/s | median of %d; start → slot confirmed; peak RSS %.0f MiB; %s µs CPU per change |\n' \
    "$(fmt "$c")" "$rounds" "$(awk -v k="$hwm" 'BEGIN {print k / 1024}')" "$(per_change "$(med "${cpu_c[@]}")")"
  printf '| backlog drain: walcast / min(a, b) | **%s** | goal ≥ 0.8; per round: %s |\n' \
    "$fraction" "${fractions[*]}"
fi
d=$(med "${rates_d[@]}") e=$(med "${rates_e[@]}")
printf '| backlog drain: plain lapin publish (confirms) + consume (e) | %s msgs/s | median of %d; %s persistent msgs of %s B with walcast'"'"'s source header, window %s, one consumer (prefetch %s, multiple acks); client %s µs, RabbitMQ %s µs CPU per message |\n' \
  "$(fmt "$e")" "$rounds" "$(fmt "$changes")" "$size" "$window" "$prefetch" \
  "$(per_change "$(med "${cpu_e[@]}")")" "$(per_change "$(med "${rabbit_e[@]}")")"
if [ "$bare" = 1 ]; then
  printf '| backlog drain: the same without the source header | %s msgs/s | median of %d, right after (e) in every round; client %s µs, RabbitMQ %s µs CPU per message; walcast run (d) ÷ this: %s (per round: %s) |\n' \
    "$(fmt "$(med "${rates_e0[@]}")")" "$rounds" "$(per_change "$(med "${cpu_e0[@]}")")" \
    "$(per_change "$(med "${rabbit_e0[@]}")")" "$(med "${bare_fractions[@]}")" "${bare_fractions[*]}"
fi
printf '| backlog drain: walcast run, all roles (d) | %s changes/s | median of %d; default settings; start → every change acked by the gateway and slot confirmed; peak RSS %.0f MiB; walcast %s µs, RabbitMQ %s µs, Postgres walsender %s µs CPU per change |\n' \
  "$(fmt "$d")" "$rounds" "$(awk -v k="$(med "${hwms_d[@]}")" 'BEGIN {print k / 1024}')" \
  "$(per_change "$(med "${cpu_d[@]}")")" "$(per_change "$(med "${rabbit_d[@]}")")" \
  "$(per_change "$(med "${walsender_d[@]}")")"
printf '| backlog drain: walcast run / publish + consume (d / e) | **%s** | goal ≥ 0.85; per round: %s |\n' \
  "$(med "${pipeline_fractions[@]}")" "${pipeline_fractions[*]}"
if [ -n "$other_bin" ]; then
  printf '| backlog drain: walcast run, all roles, %s (d) | %s changes/s | median of %d, rounds interleaved with the row above; walcast %s µs, RabbitMQ %s µs, Postgres walsender %s µs CPU per change |\n' \
    "$other_label" "$(fmt "$(med "${rates_o[@]}")")" "$rounds" \
    "$(per_change "$(med "${cpu_o[@]}")")" "$(per_change "$(med "${rabbit_o[@]}")")" \
    "$(per_change "$(med "${walsender_o[@]}")")"
  printf '| backlog drain: walcast run, %s / publish + consume | **%s** | per round: %s |\n' \
    "$other_label" "$(med "${other_fractions[@]}")" "${other_fractions[*]}"
fi
