// Socket.IO load client for scripts/bench/latency.sh and fanout.sh: many
// real socket.io-client sockets (websocket transport) in this one Node
// process, a load command run once they are all connected, and one JSON
// summary on stdout.
//
//   node scripts/bench/sio-bench.mjs '<json options>'
//
// options:
//   url            walcast's http://host:port
//   groups         [{name, count, subscribe?: "key", sampleEvery?: n}]
//                  "key": socket i of the group subscribes to
//                  {table: "public.orders", key: {id: i + 1}}; otherwise it
//                  receives everything; an object: every socket of the
//                  group sends it as its `subscribe` (e.g. a projection,
//                  {table, fields, old}) and receives that table's
//                  changes. Only every sampleEvery-th socket
//                  (default 1: all) records latencies.
//   concurrency    sockets connecting at once (default 200)
//   load           [program, ...args]: run when every socket is ready; its
//                  last stdout line is JSON with `committed` (bench_load)
//   drainMs        after the load ends, wait until every expected change
//                  arrived or this long (default 5000)
//   holdMs         with no load: keep the sockets this long, then report
//   serverPid      walcast's pid: report its RSS before the sockets connect,
//                  once they are connected (after settleMs, default 2000),
//                  and its peak (VmHWM) at the end, and its CPU time and
//                  write system calls during the load
//
// Latency of a change = receipt time − its `commit_time` (same machine
// clock). The summary has, per group: sockets connected, changes received,
// expected, latency p50/p99/max in ms, disconnects, and the span of
// receipts; and `cpu`: user+system seconds of this client and of walcast
// from the start of the load to the end of the drain, the wall time in
// between, and the load generator's own CPU if it reports it.

import { createRequire } from "node:module";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import os from "node:os";

const require = createRequire(new URL("../../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");

const options = JSON.parse(process.argv[2] ?? "{}");
const concurrency = options.concurrency ?? 200;
const drainMs = options.drainMs ?? 5000;
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (msg) => process.stderr.write(`[sio-bench] ${msg}\n`);

// "2026-11-22T05:04:10.580065Z" → ms since the epoch, with the microseconds.
function commitMs(text) {
  const dot = text.indexOf(".");
  if (dot < 0) return Date.parse(text);
  const end = text.length - 1; // the "Z"
  return Date.parse(text.slice(0, dot) + "Z") + Number("0." + text.slice(dot + 1, end)) * 1000;
}

class Samples {
  constructor() { this.buf = new Float64Array(1 << 16); this.n = 0; }
  push(x) {
    if (this.n === this.buf.length) {
      const bigger = new Float64Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[this.n++] = x;
  }
  summary() {
    const a = this.buf.subarray(0, this.n).sort();
    const q = (p) => (this.n ? a[Math.min(this.n - 1, Math.floor(p * this.n))] : null);
    return { samples: this.n, p50: q(0.5), p99: q(0.99), max: this.n ? a[this.n - 1] : null };
  }
}

const groups = (options.groups ?? [{ name: "all", count: 1 }]).map((g) => ({
  ...g,
  connected: 0,
  failed: 0,
  disconnects: 0,
  received: 0,
  first: null,
  last: null,
  lat: new Samples(),
}));
const sockets = [];
let counting = false;

function openSocket(group, index) {
  return new Promise((resolve) => {
    const socket = io(options.url, {
      transports: ["websocket"],
      forceNew: true,
      reconnection: false,
      timeout: 30000,
    });
    sockets.push(socket);
    const sample = index % (group.sampleEvery ?? 1) === 0;
    socket.on("change", (event) => {
      if (!counting) return;
      const t = now();
      group.received++;
      if (group.first === null) group.first = t;
      group.last = t;
      if (sample) group.lat.push(t - commitMs(event.commit_time));
    });
    socket.on("disconnect", () => { group.disconnects++; });
    socket.on("connect_error", () => { group.failed++; resolve(); });
    socket.on("connect", async () => {
      group.connected++;
      if (group.subscribe) {
        try {
          const payload =
            group.subscribe === "key" ? { table: "public.orders", key: { id: index + 1 } } : group.subscribe;
          const ack = await socket.timeout(30000).emitWithAck("subscribe", payload);
          if (!ack?.ok) group.failed++;
        } catch {
          group.failed++;
        }
      }
      resolve();
    });
  });
}

async function connectAll() {
  const t0 = now();
  const jobs = [];
  for (const group of groups) for (let i = 0; i < group.count; i++) jobs.push([group, i]);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const [group, i] = jobs[next++];
      await openSocket(group, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, jobs.length) }, worker));
  return now() - t0;
}

function runLoad(argv) {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => { out += d; });
    child.on("error", reject);
    child.on("exit", (code) => {
      if (code !== 0) return reject(new Error(`load exited with ${code}`));
      const lines = out.trim().split("\n");
      resolve(JSON.parse(lines[lines.length - 1]));
    });
  });
}

function serverKiB(field) {
  if (!options.serverPid) return null;
  const status = readFileSync(`/proc/${options.serverPid}/status`, "utf8");
  const m = status.match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  return m ? Number(m[1]) : null;
}
// User + system CPU seconds of a process so far.
function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime, in clock ticks (100 a second on Linux).
    return (Number(rest[11]) + Number(rest[12])) / 100;
  } catch {
    return null;
  }
}
const serverRssBefore = serverKiB("VmRSS");
const connectMs = await connectAll();
log(`connected ${groups.map((g) => `${g.name}: ${g.connected}/${g.count}`).join(", ")} in ${Math.round(connectMs)} ms`);
const memory = process.memoryUsage().rss;
let serverRssConnected = null;
if (options.serverPid) {
  await sleep(options.settleMs ?? 2000);
  serverRssConnected = serverKiB("VmRSS");
}
const cpuStart = {
  client: process.cpuUsage(),
  server: options.serverPid ? cpuSeconds(options.serverPid) : null,
  wall: now(),
};
counting = true;
let load = null;
if (options.load) {
  load = await runLoad(options.load);
  const expected = (g) => (g.subscribe === "key" ? load.committed : load.committed * g.connected);
  const deadline = now() + drainMs;
  while (now() < deadline && groups.some((g) => g.received < expected(g))) await sleep(50);
  for (const g of groups) g.expected = expected(g);
} else {
  await sleep(options.holdMs ?? 1000);
}
counting = false;
const clientCpu = process.cpuUsage(cpuStart.client);
const serverEnd = options.serverPid ? cpuSeconds(options.serverPid) : null;
const summary = {
  connectMs: Math.round(connectMs),
  clientRssMiB: Math.round(memory / 1048576),
  serverKiB: { before: serverRssBefore, connected: serverRssConnected, peak: serverKiB("VmHWM") },
  load,
  cpu: {
    wallSec: (now() - cpuStart.wall) / 1000,
    clientSec: (clientCpu.user + clientCpu.system) / 1e6,
    serverSec: serverEnd !== null && cpuStart.server !== null ? serverEnd - cpuStart.server : null,
    loadSec: load?.cpuSec ?? null,
    cores: os.cpus().length,
  },
  groups: groups.map((g) => ({
    name: g.name,
    sockets: g.count,
    connected: g.connected,
    failed: g.failed,
    disconnects: g.disconnects,
    received: g.received,
    expected: g.expected ?? null,
    spanMs: g.first === null ? 0 : g.last - g.first,
    latencyMs: g.lat.summary(),
  })),
};
process.stdout.write(JSON.stringify(summary) + "\n");
for (const s of sockets) s.disconnect();
setTimeout(() => process.exit(0), 200);
