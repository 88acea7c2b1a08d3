#!/usr/bin/env bash
# Benchmark: what a dashboard user feels. Real socket.io-client sockets in
# Node receive every change while orders are written through walcast's
# HTTP API.
#
#   scripts/bench/node_clients.sh
#
# `walcast run --role capture,gateway,api` (release, default settings: all
# roles in one process, as a user starts it) on a database of its own with
# 1,000 orders; BENCH_NODE_SOCKETS (default 100) socket.io-client sockets in
# one Node process (scripts/bench/sio-bench.mjs, websocket transport), every
# one receiving everything and recording every change's latency (receipt
# time − commit_time, same clock); scripts/bench/api-load.mjs sends
# BENCH_NODE_RATE (default 300) PATCH /orders/{id} per second, at most 16
# at a time, for BENCH_NODE_SECONDS (default 30). BENCH_NODE_ROUNDS rounds
# (default 3) on the same stack, one row each, then the medians.
#
# Each row: latency p50/p99/max (commit → client), delivery ratio, the
# API's achieved rate, and each process's CPU in % of one core over the
# load and drain: walcast, the Node clients, the API load generator (its
# own measure); walcast's CPU per socket delivery. A `top` row adds Postgres and RabbitMQ (both Node processes
# count as "client" there).
#
# A second row per round says where the changes that reached the clients
# late (over 100 and 250 ms after commit) were held: how many changes the
# capture handed to the publisher that late
# (walcast_capture_commit_to_publish_lag_seconds), how many the hub queued
# for the sockets that late (walcast_fanout_commit_to_deliver_lag_seconds,
# from /metrics before and after the round), and how many deliveries the
# clients received that late. Late at the clients but not at the hub means
# held between the sockets' queues and the clients' event loop.
#
# BENCH_NODE_THREADS (default 1) spreads the sockets over that many Node
# worker threads, each with an event loop of its own: for loads a single
# event loop cannot parse in time (BENCH_NODE_RATE=3000 is the unpaced
# case), so that the clients' own queueing does not pass for walcast's.
#
# BENCH_NODE_SUBSCRIBE='{"table": "public.orders", "fields": ["status"], "old": false}'
# makes every socket send that `subscribe` first (smaller events: the
# projection's effect on the clients' CPU and on latency).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

sockets="${BENCH_NODE_SOCKETS:-100}"
rate="${BENCH_NODE_RATE:-300}"
seconds="${BENCH_NODE_SECONDS:-30}"
rounds="${BENCH_NODE_ROUNDS:-3}"
threads="${BENCH_NODE_THREADS:-1}"
[ -d tests/js/node_modules ] || (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
bash scripts/ensure-services.sh >/dev/null 2>&1
bench_build

trap stack_down EXIT
BENCH_ROLES=capture,gateway,api stack_up node 1000

# Changes later than 0.1 and 0.25 s after commit at the capture and at the
# hub so far, and changes timed: {capture: {n, over: {100, 250}}, hub: …}.
late_counts() {
  curl -s "$walcast_url/metrics" | awk '
    function count(family, bound) {
      if ($1 == family "_bucket{le=\"" bound "\"}") le[family, bound] = $2
      if ($1 == family "_count") n[family] = $2
    }
    { for (f in fam) { count(fam[f], "0.1"); count(fam[f], "0.25") } }
    BEGIN {
      fam["capture"] = "walcast_capture_commit_to_publish_lag_seconds"
      fam["hub"] = "walcast_fanout_commit_to_deliver_lag_seconds"
    }
    END {
      printf "{"
      sep = ""
      for (f in fam) {
        x = fam[f]
        printf "%s\"%s\": {\"n\": %d, \"over\": {\"100\": %d, \"250\": %d}}", sep, f, n[x], n[x] - le[x, "0.1"], n[x] - le[x, "0.25"]
        sep = ", "
      }
      print "}"
    }'
}

p50s=() p99s=() maxes=() costs=()
for round in $(seq 1 "$rounds"); do
  load=$(jq -cn --arg url "$walcast_url" --argjson rate "$rate" --argjson seconds "$seconds" \
    '{url: $url, rate: $rate, seconds: $seconds, concurrency: 16, keys: 1000}')
  options=$(jq -cn --arg url "$walcast_url" --argjson sockets "$sockets" --argjson pid "$walcast_pid" \
    --arg load "$load" --argjson subscribe "${BENCH_NODE_SUBSCRIBE:-null}" --argjson threads "$threads" \
    '{url: $url, serverPid: $pid, drainMs: 30000, concurrency: 50, threads: $threads,
      groups: [{name: (if $subscribe then "projected" else "all" end), count: $sockets}
               + (if $subscribe then {subscribe: $subscribe} else {} end)],
      load: ["node", "scripts/bench/api-load.mjs", $load]}')
  log "round $round: $sockets Node sockets on $threads thread(s), $rate API writes/s for $seconds s"
  top_file=$(mktemp)
  cpu_watch_start "$top_file"
  late_before=$(late_counts)
  summary=$(node scripts/bench/sio-bench.mjs "$options")
  cpu_watch_stop
  late_after=$(late_counts)
  log "$(jq -c '{load, cpu}' <<<"$summary")"
  jq -r --arg rate "$rate" --arg round "$round" --arg threads "$threads" '
    . as $s | .groups[0] as $g
    | def pct(x): if x == null then "n/a" else (x / $s.cpu.wallSec * 100 | round | tostring) end;
    "| node clients \($round): \($g.connected) sockets (\($g.name)) on \($threads) Node thread(s), \($rate) API writes/s | p50 \($g.latencyMs.p50 // 0 | . * 10 | round / 10) ms, p99 \($g.latencyMs.p99 // 0 | . * 10 | round / 10) ms, max \($g.latencyMs.max // 0 | round) ms | delivery \(if ($g.expected // 0) > 0 then ($g.received / $g.expected * 10000 | floor / 10000) else "n/a" end) (\($g.received)/\($g.expected)); API \($s.load.rate | round)/s of \($rate)/s asked (\($s.load.committed) writes, \($s.load.failed) failed, max \($s.load.max_late_ms | round) ms behind, HTTP p99 \($s.load.http_ms.p99 // 0 | round) ms); \($g.disconnects) disconnects; CPU % of a core: walcast \(pct($s.cpu.serverSec)), Node clients \(pct($s.cpu.clientSec)), API load \(pct($s.cpu.loadSec)); walcast \(if $g.received > 0 then ($s.cpu.serverSec / $g.received * 1e6 | . * 10 | round / 10) else "n/a" end) µs CPU per socket delivery |"' \
    <<<"$summary"
  jq -rn --argjson b "$late_before" --argjson a "$late_after" --argjson s "$summary" --arg round "$round" '
    def d(stage; bound): $a[stage].over[bound] - $b[stage].over[bound];
    ($a.capture.n - $b.capture.n) as $changes | $s.groups[0].latencyMs as $l
    | def at(bound): "capture \(d("capture"; bound)), hub \(d("hub"; bound)) of \($changes) changes; clients \($l.above[bound]) of \($l.samples) deliveries";
    "| node clients \($round): where late changes were held | over 100 ms after commit: \(at("100")) | over 250 ms: \(at("250")) |"'
  cpu_watch_row "node clients $round" "$top_file"
  rm -f "$top_file"
  p50s+=("$(jq '.groups[0].latencyMs.p50 // 0' <<<"$summary")")
  p99s+=("$(jq '.groups[0].latencyMs.p99 // 0' <<<"$summary")")
  maxes+=("$(jq '.groups[0].latencyMs.max // 0' <<<"$summary")")
  costs+=("$(jq '.cpu.serverSec / ([.groups[0].received, 1] | max) * 1e6' <<<"$summary")")
done
printf '| node clients: median of %s rounds | p50 %.1f ms, p99 %.1f ms, max %.0f ms | walcast %.1f µs CPU per socket delivery (median) |\n' \
  "$rounds" "$(printf '%s\n' "${p50s[@]}" | median)" "$(printf '%s\n' "${p99s[@]}" | median)" \
  "$(printf '%s\n' "${maxes[@]}" | median)" "$(printf '%s\n' "${costs[@]}" | median)"
