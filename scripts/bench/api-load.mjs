// Load generator for scripts/bench/node_clients.sh: writes orders through
// walcast's HTTP API (the way the dashboard does) at a steady rate, as a
// user of the API would, and prints one JSON summary line on stdout.
//
//   node scripts/bench/api-load.mjs '<json options>'
//
// options:
//   url          walcast's http://host:port (role api)
//   rate         writes per second (default 300)
//   seconds      how long (default 30)
//   concurrency  requests in flight at most (default 16)
//   keys         orders 1..keys are updated round-robin (default 1000)
//
// Write i is due at start + i / rate; each of `concurrency` workers takes
// the next write, waits until it is due, and sends
// PATCH /orders/{id} {"customer_name": "..."} (one UPDATE, so one change
// event). The summary: committed (2xx answers), failed, rate achieved,
// max_late_ms (how far behind schedule a write was sent: a sign that the
// API or the machine could not keep up), HTTP latency p50/p99/max in ms,
// and this process's CPU seconds.

const options = JSON.parse(process.argv[2] ?? "{}");
const rate = options.rate ?? 300;
const seconds = options.seconds ?? 30;
const concurrency = options.concurrency ?? 16;
const keys = options.keys ?? 1000;
const total = Math.round(rate * seconds);
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const latencies = new Float64Array(total);
let next = 0;
let committed = 0;
let failed = 0;
let maxLate = 0;
let firstError = null;
const cpuStart = process.cpuUsage();
const t0 = now();

async function worker() {
  for (;;) {
    const i = next++;
    if (i >= total) return;
    const due = t0 + (i * 1000) / rate;
    const wait = due - now();
    if (wait > 0) await sleep(wait);
    else maxLate = Math.max(maxLate, -wait);
    const id = (i % keys) + 1;
    const sent = now();
    try {
      const res = await fetch(`${options.url}/orders/${id}`, {
        method: "PATCH",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ customer_name: `Customer ${id} write ${i}` }),
      });
      await res.arrayBuffer();
      if (res.ok) {
        latencies[committed++] = now() - sent;
      } else {
        failed++;
        firstError ??= `HTTP ${res.status}`;
      }
    } catch (e) {
      failed++;
      firstError ??= String(e);
    }
  }
}

await Promise.all(Array.from({ length: concurrency }, worker));
const elapsed = (now() - t0) / 1000;
const cpu = process.cpuUsage(cpuStart);
const sorted = latencies.subarray(0, committed).sort();
const q = (p) => (committed ? sorted[Math.min(committed - 1, Math.floor(p * committed))] : null);
if (firstError) process.stderr.write(`[api-load] ${failed} writes failed, first: ${firstError}\n`);
process.stdout.write(
  JSON.stringify({
    committed,
    failed,
    rate: committed / elapsed,
    seconds: elapsed,
    max_late_ms: maxLate,
    http_ms: { p50: q(0.5), p99: q(0.99), max: committed ? sorted[committed - 1] : null },
    cpuSec: (cpu.user + cpu.system) / 1e6,
  }) + "\n",
);
