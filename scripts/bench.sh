#!/usr/bin/env bash
# walcast's benchmark suite, against the real PostgreSQL and RabbitMQ on
# this machine (scripts/ensure-services.sh starts them). Prints one markdown
# table, headed by a description of the machine, on stdout (progress goes to
# stderr) and keeps a copy in target/bench/. BENCHMARKS.md holds the latest
# results. Only numbers are printed; nothing here passes or fails on time.
#
#   scripts/bench.sh                        # everything (about 5 minutes on a quiet 2-core machine)
#   scripts/bench.sh decoder drain          # some: decoder drain latency fanout node large backfill
#   BENCH_ROWS=50000 BENCH_SECONDS=5 BENCH_LARGE_ROWS=100000 scripts/bench.sh   # quick
#
# Sizes (environment):
#   BENCH_ROWS            backlog drain: committed changes (default 200000)
#   BENCH_DRAIN_ROUNDS    backlog drain: rounds, medians reported (default 3)
#   BENCH_SECONDS         latency: seconds per scenario (default 30)
#   BENCH_FANOUT_SOCKETS  fan-out: sockets (default 10000)
#   BENCH_FANOUT_RATE     fan-out: changes/s (default 10)
#   BENCH_FANOUT_SECONDS  fan-out: seconds of load (default 10)
#   BENCH_CLIENT_THREADS  fan-out: worker threads of the Rust client (default 1)
#   BENCH_NODE_SOCKETS    node clients: socket.io-client sockets (default 100)
#   BENCH_NODE_RATE       node clients: API writes/s (default 300; e.g. 3000: unpaced)
#   BENCH_NODE_SECONDS    node clients: seconds of load per round (default 30)
#   BENCH_NODE_ROUNDS     node clients: rounds, medians reported (default 3)
#   BENCH_LARGE_ROWS      large transaction: rows of the UPDATE (default 1000000)
#   BENCH_BACKFILL_ROWS   backfill: existing rows (default 1000000)
#
# Every benchmark uses its own database, slots, exchanges and queues and
# removes them; all traffic stays on 127.0.0.1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/env.sh
. scripts/env.sh
# shellcheck source=scripts/cargo-env.sh
. scripts/cargo-env.sh
log() { printf '[bench] %s\n' "$*" >&2; }

selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=(decoder drain latency fanout node large backfill)
for name in "${selected[@]}"; do
  case "$name" in
    decoder | drain | latency | fanout | node | large | backfill) ;;
    *) log "unknown benchmark $name (decoder drain latency fanout node large backfill)"; exit 2 ;;
  esac
done

log "services and builds"
bash scripts/ensure-services.sh >/dev/null 2>&1
[ -d tests/js/node_modules ] || (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release --quiet --bin walcast --example bench_amqp --example bench_load --example bench_sio --example bench_floor
export BENCH_NO_BUILD=1

mkdir -p target/bench
out="target/bench/$(date -u +%Y%m%dT%H%M%SZ).md"
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)

decoder() {
  log "decoder (criterion)"
  cargo bench --quiet --bench decoder >&2
  local id label
  while IFS='|' read -r id label; do
    local dir="target/criterion/decoder/$id/new" ns elements
    ns=$(jq '.median.point_estimate' "$dir/estimates.json")
    elements=$(jq '.throughput.Elements // 1' "$dir/benchmark.json")
    awk -v id="$label" -v ns="$ns" -v n="$elements" 'BEGIN {
      printf "| decoder: %s | %.0f changes/s | %.0f ns per change, median, one core |\n", id, n * 1e9 / ns, ns / n }' >>"$rows"
  done <<'IDS'
orders_insert|orders insert → JSON
orders_update|orders update (old + new row) → JSON
orders_delete|orders delete → JSON
orders_mixed_txn10|orders transaction of 5 inserts, 3 updates, 2 deletes → JSON
wide_insert|30-column insert → JSON
wide_update|30-column update (old + new row) → JSON
orders_update_decode_only|orders update, decode only (no JSON)
orders_update_json_only|orders update, JSON only
wide_update_decode_only|30-column update, decode only (no JSON)
wide_update_json_only|30-column update, JSON only
IDS
}

for name in "${selected[@]}"; do
  case "$name" in
    decoder) decoder ;;
    drain) log "backlog drain"; bash scripts/bench/drain.sh >>"$rows" ;;
    latency) log "commit-to-browser latency"; bash scripts/bench/latency.sh >>"$rows" ;;
    fanout) log "fan-out"; bash scripts/bench/fanout.sh >>"$rows" ;;
    node) log "Node clients, API writes"; bash scripts/bench/node_clients.sh >>"$rows" ;;
    large)
      log "large transaction"
      bash scripts/bench/large_txn.sh "${BENCH_LARGE_ROWS:-1000000}" update >>"$rows"
      ;;
    backfill)
      log "backfill"
      bash scripts/bench/backfill.sh "${BENCH_BACKFILL_ROWS:-1000000}" >>"$rows"
      ;;
  esac
done

pg_version=$(psql "postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/postgres" -Atc 'SHOW server_version')
mq_version=$(rabbitmqctl -q status 2>/dev/null | awk -F': ' '/RabbitMQ version/ {print $2}')
sio_version=$(node -p 'require("./tests/js/node_modules/socket.io-client/package.json").version')
{
  echo "walcast $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+dirty'), $(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - started )) s"
  echo
  echo "- machine: $(nproc) cores ($(lscpu | awk -F': +' '/^Model name/ {print $2; exit}')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -sr)"
  echo "- load average (1/5/15 min): $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
  echo "- PostgreSQL $pg_version (synchronous_commit=on, fsync=on), RabbitMQ $mq_version, $(rustc --version | cut -d' ' -f1-2), Node $(node --version), socket.io-client $sio_version"
  echo
  echo "| benchmark | result | details |"
  echo "|---|---|---|"
  cat "$rows"
} | tee "$out"
log "saved to $out"
