#!/usr/bin/env bash
# Benchmark: commit-to-browser latency under steady load.
#
#   scripts/bench/latency.sh          # BENCH_SECONDS per scenario (default 30)
#
# walcast run --role capture,gateway (release, default settings) on a
# database of its own with 1,000 orders; real Socket.IO client sockets in a
# separate process: examples/bench_sio.rs (Rust, Engine.IO v4 / Socket.IO v5
# over WebSocket), or with BENCH_LATENCY_CLIENT=node socket.io-client in Node
# (scripts/bench/sio-bench.mjs, same options and summary); examples/bench_load
# commits single-row UPDATE transactions at a steady rate over 16
# connections (synchronous_commit as the server has it: on).
#   (i)  1,000 changes/s; 10 sockets receive everything, 1,000 sockets are
#        each subscribed to one order, and the load updates orders 1..1000
#        round-robin (every subscribed socket gets 1 change/s).
#   (ii) 5,000 changes/s; 10 sockets receive everything.
# Latency = receipt time in Node − the event's commit_time (same clock).
# Delivery ratio = changes received / (committed × sockets), or / committed
# for the subscribed sockets (one per order).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

seconds="${BENCH_SECONDS:-30}"
[ -d tests/js/node_modules ] || (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
bash scripts/ensure-services.sh >/dev/null 2>&1
bench_build

trap stack_down EXIT
stack_up latency 1000

# scenario NAME RATE GROUPS_JSON
scenario() {
  local name="$1" rate="$2" groups="$3" options summary
  log "$name: $rate changes/s for $seconds s"
  options=$(jq -cn --arg url "$walcast_url" --argjson groups "$groups" --argjson pid "$walcast_pid" \
    --arg load "$load_tool" --arg db "$url" --arg rate "$rate" --arg seconds "$seconds" \
    '{url: $url, serverPid: $pid, groups: $groups, drainMs: 10000,
      load: [$load, "--url", $db, "--rate", $rate, "--seconds", $seconds, "--keys", "1000", "--connections", "16"]}')
  local top_file
  top_file=$(mktemp)
  cpu_watch_start "$top_file"
  if [ "${BENCH_LATENCY_CLIENT:-rust}" = node ]; then
    summary=$(node scripts/bench/sio-bench.mjs "$options")
  else
    summary=$("$sio_tool" "$options")
  fi
  cpu_watch_stop
  log "$name: $(jq -c '.load' <<<"$summary")"
  jq -r --arg name "$name" --arg rate "$rate" '
    . as $s
    | .groups[]
    | "| latency \($name): \(.name) (\(.connected) sockets) | p50 \(.latencyMs.p50 // 0 | . * 10 | round / 10) ms, p99 \(.latencyMs.p99 // 0 | . * 10 | round / 10) ms, max \(.latencyMs.max // 0 | round) ms | delivery \(if (.expected // 0) > 0 then (.received / .expected * 10000 | floor / 10000) else "n/a" end) (\(.received)/\(.expected)); load \($s.load.rate | round)/s of \($rate)/s asked, \($s.load.committed) commits, max \($s.load.max_late_ms | round) ms behind; \(.disconnects) disconnects\(if $s.cpu then "; CPU: walcast \($s.cpu.serverSec / $s.cpu.wallSec * 100 | round) %, client \($s.cpu.clientSec / $s.cpu.wallSec * 100 | round) % of a core" else "" end) |"' \
    <<<"$summary"
  cpu_watch_row "latency $name" "$top_file"
  rm -f "$top_file"
}

# BENCH_LATENCY_ONLY=i or =ii runs one of the two.
only="${BENCH_LATENCY_ONLY:-}"
[ "$only" = ii ] || scenario "(i) 1000/s" 1000 '[{"name":"all","count":10},{"name":"one order each","count":1000,"subscribe":"key"}]'
[ "$only" = i ] || scenario "(ii) 5000/s" 5000 '[{"name":"all","count":10}]'
