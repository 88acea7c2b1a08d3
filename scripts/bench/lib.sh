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
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

admin="postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/postgres"
amqp_url="${WALCAST_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
bin="$root/target/release/walcast"
amqp_tool="$root/target/release/examples/bench_amqp"
load_tool="$root/target/release/examples/bench_load"

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# Builds walcast and the helper programs (release) unless BENCH_NO_BUILD=1.
bench_build() {
  [ "${BENCH_NO_BUILD:-0}" = 1 ] && return 0
  cargo build --release --quiet --bin walcast --example bench_amqp --example bench_load
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

# peak_rss_kib PID: VmHWM of a live process.
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# median of numbers on stdin, one a line.
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }
