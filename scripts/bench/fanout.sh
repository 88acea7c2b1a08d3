#!/usr/bin/env bash
# Benchmark: Socket.IO fan-out to many sockets.
#
#   scripts/bench/fanout.sh
#
# walcast run --role capture,gateway (release, default settings) and
# BENCH_FANOUT_SOCKETS (default 10,000) Socket.IO sockets in one separate
# client process (examples/bench_sio.rs: Engine.IO v4 / Socket.IO v5 over
# WebSocket in Rust, BENCH_CLIENT_THREADS worker threads, default 1), every
# one receiving every change. Reports walcast's RSS per connected socket ((RSS with the
# sockets connected and idle − RSS before) / sockets), then commits
# BENCH_FANOUT_RATE single-row updates per second (default 10) for
# BENCH_FANOUT_SECONDS (default 10) and reports the client deliveries per second
# the sockets received (changes received by all sockets / time from first
# to last receipt), the delivery ratio, latency (1 socket in 100 records
# it) and disconnects (walcast drops a socket that falls socket_buffer
# events behind), plus the CPU seconds the client and walcast used while
# the load ran and drained, and the headline: walcast's CPU time (user +
# system) per socket delivery.
#
# Then the floor under that figure on this machine (examples/bench_floor.rs,
# unless BENCH_FANOUT_FLOOR=0), with the same sockets, rate and seconds and
# walcast stopped: a pre-framed WebSocket message of BENCH_FLOOR_PAYLOAD
# bytes (default 700) through nothing but a bounded channel and a writer
# task per socket (the architecture of engineioxide, without socketioxide,
# engineioxide or walcast's hub), and through one task writing every socket
# (only the write system calls). Its CPU per delivery is what no server that
# writes each socket once per event can go under here; on loopback it
# includes the receiving side's TCP work, which the kernel does in the
# sender's system call. Last, the task-per-socket floor once more, read by
# the same client process as walcast (bench_sio, `--peer sio`: the floor
# answers the Engine.IO/Socket.IO handshake and writes pre-framed `change`
# events carrying `commit_time`), so that its latency and deliveries/s are
# measured exactly as walcast's, with the same client's CPU on the machine.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

sockets="${BENCH_FANOUT_SOCKETS:-10000}"
rate="${BENCH_FANOUT_RATE:-10}"
seconds="${BENCH_FANOUT_SECONDS:-10}"
threads="${BENCH_CLIENT_THREADS:-1}"
bash scripts/ensure-services.sh >/dev/null 2>&1
bench_build

trap stack_down EXIT
stack_up fanout 1000
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

options=$(jq -cn --arg url "$walcast_url" --argjson sockets "$sockets" --argjson pid "$walcast_pid" \
  --arg load "$load_tool" --arg db "$url" --arg rate "$rate" --arg seconds "$seconds" \
  --argjson threads "$threads" \
  '{url: $url, serverPid: $pid, concurrency: 100, drainMs: 120000, threads: $threads,
    groups: [{name: "all", count: $sockets, sampleEvery: 100}],
    load: [$load, "--url", $db, "--rate", $rate, "--seconds", $seconds, "--keys", "1000", "--connections", "4"]}')
log "$sockets sockets, $rate changes/s for $seconds s"
summary=$("$sio_tool" "$options")
log "$(jq -c '{connectMs, clientRssMiB, serverKiB, cpu, load}' <<<"$summary")"
jq -r --arg rate "$rate" '
  . as $s
  | .groups[0] as $g
  | ($s.serverKiB.connected - $s.serverKiB.before) as $grown
  | "| fan-out: walcast memory per socket | \($grown / $g.connected | . * 10 | round / 10) KiB | RSS \($s.serverKiB.before / 1024 | round) MiB → \($s.serverKiB.connected / 1024 | round) MiB with \($g.connected) idle sockets connected (\($g.failed) failed) in \($s.connectMs / 1000 | . * 10 | round / 10) s; peak \($s.serverKiB.peak / 1024 | round) MiB |",
    "| fan-out: walcast CPU per socket delivery | \(if $g.received > 0 then ($s.cpu.serverSec / $g.received * 1e6 | . * 100 | round / 100) else "n/a" end) µs | \($s.cpu.serverSec | . * 100 | round / 100) CPU-s for \($g.received) deliveries to \($g.connected) sockets at \($rate) changes/s |",
    "| fan-out: deliveries to \($g.connected) sockets | \(if $g.spanMs > 0 then ($g.received / $g.spanMs * 1000 | round) else 0 end) deliveries/s | \($s.load.rate | round) changes/s (\($rate)/s asked); delivery \(if ($g.expected // 0) > 0 then ($g.received / $g.expected * 10000 | floor / 10000) else "n/a" end) (\($g.received)/\($g.expected)); latency p50 \($g.latencyMs.p50 // 0 | round) ms, p99 \($g.latencyMs.p99 // 0 | round) ms; \($g.disconnects) disconnects; CPU while loaded: walcast \($s.cpu.serverSec / $s.cpu.wallSec * 100 | round) %, client \($s.cpu.clientSec / $s.cpu.wallSec * 100 | round) % of a core (\($s.cpu.clientThreads) thread(s), RSS \($s.clientRssMiB) MiB) |"' \
  <<<"$summary"

[ "${BENCH_FANOUT_FLOOR:-1}" = 1 ] || exit 0
stack_down
trap - EXIT
for mode in tasks direct; do
  log "floor: $mode, $sockets sockets, $rate events/s for $seconds s"
  floor=$("$floor_tool" --mode "$mode" --sockets "$sockets" --rate "$rate" --seconds "$seconds" \
    --payload-bytes "${BENCH_FLOOR_PAYLOAD:-700}")
  jq -r '
    (if .mode == "tasks" then "a channel and a writer task per socket" else "one task writes every socket" end) as $how
    | "| fan-out floor (\(.mode)): CPU per socket delivery | \(.usPerDelivery) µs | \($how), no Socket.IO stack: user \(.userUs) + system \(.systemUs) µs; \(.deliveries) deliveries of \(.frameBytes)-byte frames to \(.sockets) sockets, \(.events) events sent in \(.broadcastSec) s, \(.deliveriesPerSec) deliveries/s received (first to last byte), \(.full) refused, client got \(.clientBytes / .expectedBytes * 10000 | floor / 10000) of the bytes; latency p50 \(.latencyMs.p50) ms, p99 \(.latencyMs.p99) ms, max \(.latencyMs.max) ms |"' \
    <<<"$floor"
done

log "floor: tasks, read by bench_sio, $sockets sockets, $rate events/s for $seconds s"
floor_out=$(mktemp)
"$floor_tool" --mode tasks --peer sio --sockets "$sockets" --rate "$rate" --seconds "$seconds" \
  --payload-bytes "${BENCH_FLOOR_PAYLOAD:-700}" >"$floor_out" &
floor_pid=$!
trap 'kill "$floor_pid" 2>/dev/null; rm -f "$floor_out"' EXIT
for _ in $(seq 1 100); do [ -s "$floor_out" ] && break; sleep 0.1; done
floor_port=$(jq -r .port "$floor_out")
floor_trigger=$(jq -r .trigger "$floor_out")
options=$(jq -cn --arg url "http://127.0.0.1:$floor_port" --argjson sockets "$sockets" \
  --argjson pid "$floor_pid" --arg tool "$floor_tool" --arg trigger "$floor_trigger" \
  --argjson threads "$threads" \
  '{url: $url, serverPid: $pid, concurrency: 100, drainMs: 120000, threads: $threads,
    groups: [{name: "all", count: $sockets, sampleEvery: 100}],
    load: [$tool, "--trigger", $trigger]}')
summary=$("$sio_tool" "$options")
kill "$floor_pid" 2>/dev/null || true
jq -r '
  . as $s
  | .groups[0] as $g
  | "| fan-out floor (tasks), read by bench_sio: CPU per socket delivery | \(if $g.received > 0 then ($s.cpu.serverSec / $g.received * 1e6 | . * 100 | round / 100) else "n/a" end) µs | a channel and a writer task per socket, no Socket.IO stack, the Socket.IO client of the walcast rows; \($g.received) deliveries to \($g.connected) sockets, \($s.load.full) refused; \($g.received / $g.spanMs * 1000 | round) deliveries/s (first to last receipt); delivery \($g.received / $g.expected * 10000 | floor / 10000); latency p50 \($g.latencyMs.p50 | round) ms, p99 \($g.latencyMs.p99 | round) ms, max \($g.latencyMs.max | round) ms; CPU while loaded: server \($s.cpu.serverSec / $s.cpu.wallSec * 100 | round) %, client \($s.cpu.clientSec / $s.cpu.wallSec * 100 | round) % of a core |"' \
  <<<"$summary"
