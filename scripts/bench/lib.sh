#!/usr/bin/env bash
# Shared helpers for scripts/bench/*.sh. Sourced, never run.
#
# Every benchmark script prints its results as markdown table rows
#   | benchmark | result | details |
# on stdout and its progress on stderr, so scripts/bench.sh can put every
# row in one table.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
# shellcheck source=scripts/env.sh
. scripts/env.sh
# shellcheck source=scripts/cargo-env.sh
. scripts/cargo-env.sh

admin="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/postgres"
amqp_url="${WALCAST_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# BENCH_WALCAST_BIN runs another build of walcast (e.g. an older commit's,
# for a before/after comparison in one sitting).
bin="${BENCH_WALCAST_BIN:-$root/target/release/walcast}"
amqp_tool="$root/target/release/examples/bench_amqp"
load_tool="$root/target/release/examples/bench_load"
sio_tool="$root/target/release/examples/bench_sio"
floor_tool="$root/target/release/examples/bench_floor"

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# Builds walcast and the helper programs (release) unless BENCH_NO_BUILD=1.
bench_build() {
  [ "${BENCH_NO_BUILD:-0}" = 1 ] && return 0
  cargo build --release --quiet --bin walcast --example bench_amqp --example bench_load --example bench_sio --example bench_floor
}

now() { date +%s.%N; }

# slot_confirmed_at_least URL SLOT LSN: whether Postgres reports the slot
# confirmed at or past LSN.
slot_confirmed_at_least() {
  [ "$(psql "$1" -Atc "SELECT confirmed_flush_lsn >= '$3' FROM pg_replication_slots WHERE slot_name = '$2'")" = t ]
}

# wait_slot URL SLOT LSN PID TIMEOUT_S: polls every 0.1 s until the slot is
# confirmed at LSN; fails if PID dies or TIMEOUT_S passes.
wait_slot() {
  local url="$1" slot="$2" lsn="$3" pid="$4" limit="$5" started
  started=$(date +%s)
  until slot_confirmed_at_least "$url" "$slot" "$lsn"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "walcast (pid $pid) died"
      return 1
    fi
    if [ $(($(date +%s) - started)) -ge "$limit" ]; then
      log "slot $slot not confirmed at $lsn within ${limit}s"
      return 1
    fi
    sleep 0.1
  done
}

# cpu_seconds PID: user + system CPU seconds of a live process so far.
cpu_seconds() {
  awk -v ticks="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / ticks}' "/proc/$1/stat"
}

# rabbit_pid: the RabbitMQ node's Erlang VM (for its CPU time).
rabbit_pid() { pgrep -o -x beam.smp || true; }

# peak_rss_kib PID: VmHWM of a live process.
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# cpu_watch_start FILE / cpu_watch_stop: top samples every process's CPU
# every 5 s into FILE in between. cpu_watch_row LABEL FILE prints a table
# row with the mean CPU (% of one core) of Postgres, RabbitMQ, walcast, the
# load generator and the benchmark client, and how idle the machine was:
# what shows which component sets a limit. walcast is told by its pid
# (walcast_pid, from stack_up) as well as by name, so a renamed build
# (BENCH_WALCAST_BIN) counts as walcast too.
cpu_watch_start() { top -b -d 5 -w 512 > "$1" 2>/dev/null & cpu_watch_pid=$!; }
cpu_watch_stop() { kill "$cpu_watch_pid" 2>/dev/null; wait "$cpu_watch_pid" 2>/dev/null || true; }
cpu_watch_row() {
  awk -v label="$1" -v walcast_pid="${walcast_pid:-0}" '
    /^top -/ { block++; next }
    block > 1 && /^%Cpu/ { if (match($0, /[0-9.]+ id/)) { idle += substr($0, RSTART, RLENGTH - 3); samples++ } next }
    block > 1 && $1 ~ /^[0-9]+$/ {
      name = $12
      if (name == "postgres") part = "postgres"
      else if (name == "beam.smp") part = "rabbitmq"
      else if (name == "walcast" || $1 == walcast_pid) part = "walcast"
      else if (name == "bench_load") part = "load"
      else if (name == "bench_sio" || name == "node") part = "client"
      else part = "other"
      cpu[part] += $9
    }
    END {
      if (samples == 0) exit
      printf "| %s: CPU by process | machine %d %% idle | mean %% of one core over %d samples of 5 s: postgres %d, rabbitmq %d, walcast %d, load generator %d, client %d, other %d |\n",
        label, idle / samples, samples, cpu["postgres"] / samples, cpu["rabbitmq"] / samples,
        cpu["walcast"] / samples, cpu["load"] / samples, cpu["client"] / samples, cpu["other"] / samples
    }' "$2"
}

# median of numbers on stdin, one a line.
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }

# drop_slots PATTERN: drops the slots named like PATTERN (SQL LIKE), waiting
# up to 10 s for their walsenders to go away.
drop_slots() {
  local i
  for i in $(seq 1 100); do
    psql "$admin" -qAtc "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE '$1' AND NOT active" >/dev/null 2>&1
    [ "$(psql "$admin" -Atc "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '$1'")" = 0 ] && return 0
    sleep 0.1
  done
  log "could not drop slots like $1"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# stack_up NAME ORDERS: a database of its own with ORDERS rows in `orders`
# (ids 1..ORDERS), and `walcast run --role capture,gateway` (release; the
# roles from BENCH_ROLES when set, e.g. capture,gateway,api) with
# its own slot, exchange and queue on a free port, ready and caught up.
# Sets db, url, exchange, queue, port, walcast_url, walcast_pid. Call
# stack_down (e.g. from an EXIT trap) to stop and remove all of it.
stack_up() {
  db="walcast_bench_$1_$$"
  url="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/$db"
  exchange="walcast.bench.$1.$$"
  queue="walcast.bench.$1.gateway.$$"
  port=$(free_port)
  walcast_url="http://127.0.0.1:$port"
  psql "$admin" -qc "CREATE DATABASE $db"
  "$bin" --database-url "$url" --slot "$db" --publication "$db" setup >/dev/null
  psql "$url" -qc "INSERT INTO orders (id, customer_name, product_name) SELECT g, 'Customer ' || g, 'Product ' || (g % 97) FROM generate_series(1, $2) g"
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  RUST_LOG=warn WALCAST_RABBITMQ_QUEUE="$queue" WALCAST_POSTGRES_STATUS_INTERVAL_MS=1000 \
    "$bin" --database-url "$url" --slot "$db" --publication "$db" \
    --rabbitmq-url "$amqp_url" --exchange "$exchange" --listen "127.0.0.1:$port" \
    run --role "${BENCH_ROLES:-capture,gateway}" &
  walcast_pid=$!
  local i
  for i in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$walcast_url/readyz")" = 200 ] && break
    kill -0 "$walcast_pid" 2>/dev/null || { log "walcast died while starting"; return 1; }
    sleep 0.1
  done
  wait_slot "$url" "$db" "$(psql "$url" -Atc 'SELECT pg_current_wal_lsn()')" "$walcast_pid" 120
}

stack_down() {
  set +e
  if [ -n "${walcast_pid:-}" ]; then
    kill -TERM "$walcast_pid" 2>/dev/null && wait "$walcast_pid" 2>/dev/null
  fi
  if [ -n "${db:-}" ]; then
    drop_slots "$db"
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  fi
  if [ -n "${exchange:-}" ]; then
    "$amqp_tool" --url "$amqp_url" delete --exchange "$exchange" --queue "$queue" >/dev/null 2>&1
  fi
}
