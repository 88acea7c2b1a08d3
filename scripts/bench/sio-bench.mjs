// Socket.IO load client for scripts/bench/latency.sh and node_clients.sh:
// many real socket.io-client sockets (websocket transport) in this one Node
// process (on one or more threads), a load command run once they are all
// connected, and one JSON summary on stdout.
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
//   threads        Node worker threads the sockets are spread over (socket
//                  i on thread i % threads), each with an event loop of its
//                  own (default 1: every socket on the main thread); for
//                  loads one event loop cannot parse in time
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
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";

const require = createRequire(new URL("../../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");

const options = isMainThread ? JSON.parse(process.argv[2] ?? "{}") : workerData.options;
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
  constructor(values) {
    this.buf = values ?? new Float64Array(1 << 16);
    this.n = values ? values.length : 0;
  }
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
    // Samples above each bound (the duration histograms' 100 and 250 ms
    // buckets, for node_clients.sh's "where late changes were held").
    const above = (bound) => {
      let lo = 0;
      let hi = this.n;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (a[mid] <= bound) lo = mid + 1;
        else hi = mid;
      }
      return this.n - lo;
    };
    return {
      samples: this.n, p50: q(0.5), p99: q(0.99), max: this.n ? a[this.n - 1] : null,
      above: { 100: above(100), 250: above(250) },
    };
  }
}

// One part of the sockets: those whose index i (over all groups) has
// i % parts === part. `received` counts each group's changes in a
// SharedArrayBuffer, so that the main thread sees every part's progress.
function startPart(part, parts, received) {
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

  function openSocket(group, g, index) {
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
        Atomics.add(received, g, 1);
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
    const jobs = [];
    let n = 0;
    groups.forEach((group, g) => {
      for (let i = 0; i < group.count; i++, n++) if (n % parts === part) jobs.push([group, g, i]);
    });
    let next = 0;
    const worker = async () => {
      while (next < jobs.length) {
        const [group, g, i] = jobs[next++];
        await openSocket(group, g, i);
      }
    };
    const share = Math.max(1, Math.ceil(concurrency / parts));
    await Promise.all(Array.from({ length: Math.min(share, jobs.length) }, worker));
  }

  return {
    connectAll,
    setCounting(on) { counting = on; },
    results: () =>
      groups.map((g) => ({
        connected: g.connected,
        failed: g.failed,
        disconnects: g.disconnects,
        received: g.received,
        first: g.first,
        last: g.last,
        lat: g.lat.buf.slice(0, g.lat.n),
      })),
    close() { for (const s of sockets) s.disconnect(); },
  };
}

// A worker thread runs one part and answers the main thread's commands.
if (!isMainThread) {
  const self = startPart(workerData.part, workerData.parts, workerData.received);
  parentPort.on("message", async ({ cmd, on }) => {
    if (cmd === "connect") await self.connectAll();
    if (cmd === "count") self.setCounting(on);
    if (cmd === "results") {
      const results = self.results();
      parentPort.postMessage({ results }, results.map((r) => r.lat.buffer));
      return;
    }
    if (cmd === "close") self.close();
    parentPort.postMessage({ done: cmd });
  });
}

// The main thread's handle on one part, in-process or on a worker thread.
function localPart(received) {
  const self = startPart(0, 1, received);
  return {
    connect: () => self.connectAll(),
    count: async (on) => self.setCounting(on),
    results: async () => self.results(),
    close: () => self.close(),
  };
}

function workerPart(part, parts, received) {
  const worker = new Worker(new URL(import.meta.url), { workerData: { options, part, parts, received } });
  worker.on("error", (e) => { log(`worker ${part}: ${e.stack ?? e}`); process.exit(1); });
  const ask = (message, reply) =>
    new Promise((resolve) => {
      const listen = (m) => {
        if (reply(m)) { worker.off("message", listen); resolve(m); }
      };
      worker.on("message", listen);
      worker.postMessage(message);
    });
  return {
    connect: () => ask({ cmd: "connect" }, (m) => m.done === "connect"),
    count: (on) => ask({ cmd: "count", on }, (m) => m.done === "count"),
    results: async () => (await ask({ cmd: "results" }, (m) => m.results)).results,
    close: () => worker.postMessage({ cmd: "close" }),
  };
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
// The main thread: connect every part, run the load, report.
if (isMainThread) {
  const groups = (options.groups ?? [{ name: "all", count: 1 }]).map((g) => ({ ...g }));
  const received = new Int32Array(new SharedArrayBuffer(4 * groups.length));
  const threads = Math.max(1, options.threads ?? 1);
  const parts = threads === 1
    ? [localPart(received)]
    : Array.from({ length: threads }, (_, i) => workerPart(i, threads, received));
  const serverRssBefore = serverKiB("VmRSS");
  const t0 = now();
  await Promise.all(parts.map((p) => p.connect()));
  const connectMs = now() - t0;
  // Every part's counts, summed per group; latencies merged.
  const partResults = async () => {
    const all = await Promise.all(parts.map((p) => p.results()));
    groups.forEach((g, i) => {
      const mine = all.map((r) => r[i]);
      const sum = (k) => mine.reduce((n, r) => n + r[k], 0);
      Object.assign(g, {
        connected: sum("connected"),
        failed: sum("failed"),
        disconnects: sum("disconnects"),
        received: sum("received"),
      });
      const firsts = mine.map((r) => r.first).filter((t) => t !== null);
      const lasts = mine.map((r) => r.last).filter((t) => t !== null);
      g.first = firsts.length ? Math.min(...firsts) : null;
      g.last = lasts.length ? Math.max(...lasts) : null;
      const lat = new Float64Array(mine.reduce((n, r) => n + r.lat.length, 0));
      let at = 0;
      for (const r of mine) { lat.set(r.lat, at); at += r.lat.length; }
      g.lat = new Samples(lat);
    });
  };
  await partResults();
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
  await Promise.all(parts.map((p) => p.count(true)));
  let load = null;
  if (options.load) {
    load = await runLoad(options.load);
    const expected = (g) => (g.subscribe === "key" ? load.committed : load.committed * g.connected);
    const deadline = now() + drainMs;
    while (now() < deadline && groups.some((g, i) => Atomics.load(received, i) < expected(g))) await sleep(50);
    for (const g of groups) g.expected = expected(g);
  } else {
    await sleep(options.holdMs ?? 1000);
  }
  await Promise.all(parts.map((p) => p.count(false)));
  await partResults();
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
  for (const p of parts) p.close();
  // process.exit drops what a piped stdout has not written yet.
  process.stdout.write(JSON.stringify(summary) + "\n", () => setTimeout(() => process.exit(0), 200));
}
