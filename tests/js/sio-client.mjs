// Socket.IO test client for walcast's fan-out integration tests.
//
// Usage: node sio-client.mjs '<json options>'
//
// mode "client" (default): connects to options.url with options.auth and
// prints one JSON line per happening on stdout, each with a receipt
// timestamp `ts` (ms since the epoch, fractional):
//   {"t":"connect","id":...}
//   {"t":"change","raw":"<the change payload exactly as received>"}
//   {"t":"event","event":"resync","data":{...}}
//   {"t":"event","event":"ready","data":{...}}   (with options.ready only)
//   {"t":"ack","seq":n,"data":...} / {"t":"ack","seq":n,"error":"..."}
//   {"t":"connect_error","message":"...","data":...}
//   {"t":"disconnect","reason":"..."}
// It reads commands, one JSON object per line, on stdin:
//   {"cmd":"emit","event":"subscribe","data":{...},"seq":1}   (with ack)
//   {"cmd":"emit","event":"x","data":{...},"noack":true}
//   {"cmd":"close"}
// `change` payloads are taken from the raw Engine.IO packet so the test can
// compare them byte for byte with what was published.
//
// mode "storm": opens options.total connections, options.concurrency at a
// time, each connecting and then disconnecting, and prints
//   {"t":"storm","ok":n,"failed":n,"refused":n,"stuck":n,"ms":n}
// With options.mix, connection i leaves in one of four ways (i % 4):
//   0: a clean disconnect;
//   1: subscribes to one row (acked), then drops the TCP connection without
//      a disconnect packet or a WebSocket close frame;
//   2: sends an unknown event and a malformed subscribe (acked), then
//      disconnects cleanly;
//   3: drops the TCP connection at once.
// `refused` counts acks of the malformed subscribe that answered ok:false;
// `stuck`, connections that did not report their end within 15 s.
//
// mode "hold": opens options.total connections, prints
//   {"t":"held","ok":n,"failed":n} once all are connected, keeps them until
// stdin closes, then disconnects them and prints {"t":"released"}.

import { io } from "socket.io-client";
import readline from "node:readline";

const options = JSON.parse(process.argv[2] ?? "{}");
const mode = options.mode ?? "client";
const transports = options.transports ?? ["websocket"];

function now() {
  return performance.timeOrigin + performance.now();
}

function out(obj) {
  process.stdout.write(JSON.stringify({ ts: now(), ...obj }) + "\n");
}

// process.exit drops what a piped stdout has not written yet: a test that
// reads slowly would get a line cut short and then EOF. Exit only once
// every line printed so far is out.
function exit(code) {
  process.stdout.write("", () => process.exit(code));
}

function connectOnce(url, auth) {
  return io(url, {
    auth,
    transports,
    // Node only: headers on the handshake request (e.g. Authorization).
    extraHeaders: options.extraHeaders,
    forceNew: true,
    reconnection: false,
    timeout: options.timeout ?? 10000,
  });
}

if (mode === "client") {
  const socket = connectOnce(options.url, options.auth ?? {});
  // socket.io-client decodes packets on a later tick than Engine.IO
  // delivers them, so raw payloads are queued here and printed when the
  // decoded `change` event comes up, in order with every other event.
  const changePrefix = '2["change",';
  const rawChanges = [];
  socket.io.engine.on("packet", (packet) => {
    if (packet.type === "message" && typeof packet.data === "string" && packet.data.startsWith(changePrefix)) {
      rawChanges.push(packet.data.slice(changePrefix.length, -1));
    }
  });
  socket.on("connect", () => out({ t: "connect", id: socket.id }));
  socket.on("change", () => out({ t: "change", raw: rawChanges.shift() }));
  socket.on("connect_error", (err) => {
    out({ t: "connect_error", message: err.message, data: err.data ?? null });
    exit(0);
  });
  socket.on("disconnect", (reason) => {
    out({ t: "disconnect", reason });
    exit(0);
  });
  // `ready` (once per connection) only when asked for, so that tests
  // reading a plain sequence of changes need not skip it.
  socket.onAny((event, ...args) => {
    if (event === "change" || (event === "ready" && !options.ready)) return;
    out({ t: "event", event, data: args[0] ?? null });
  });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    if (!line.trim()) return;
    const cmd = JSON.parse(line);
    if (cmd.cmd === "emit") {
      const args = "data" in cmd ? [cmd.data] : [];
      if (cmd.noack) {
        socket.emit(cmd.event, ...args);
      } else {
        socket.timeout(cmd.timeout ?? 5000).emit(cmd.event, ...args, (err, res) => {
          if (err) out({ t: "ack", seq: cmd.seq, error: String(err.message ?? err) });
          else out({ t: "ack", seq: cmd.seq, data: res });
        });
      }
    } else if (cmd.cmd === "close") {
      socket.disconnect();
    }
  });
  rl.on("close", () => {
    socket.disconnect();
    exit(0);
  });
} else if (mode === "storm") {
  const total = options.total ?? 1000;
  const concurrency = options.concurrency ?? 50;
  let started = 0;
  let ok = 0;
  let failed = 0;
  const t0 = now();
  let refused = 0;
  // The TCP connection goes without a goodbye: no Socket.IO disconnect
  // packet, no WebSocket close frame (ws's terminate destroys the socket).
  const abort = (socket) => {
    const ws = socket.io.engine.transport.ws;
    if (ws && typeof ws.terminate === "function") ws.terminate();
    else socket.io.engine.transport.socket?.destroy?.();
  };
  let stuck = 0;
  const leave = (socket, i, done) => {
    // A socket that never reports its end is counted, not waited for.
    const timer = setTimeout(() => { stuck++; socket.close(); done(); }, 15000);
    const resolve = () => { clearTimeout(timer); done(); };
    socket.on("disconnect", () => resolve());
    const way = options.mix ? i % 4 : 0;
    if (way === 0) {
      socket.disconnect();
    } else if (way === 1) {
      socket.timeout(10000).emit("subscribe", { table: "public.orders", key: { id: i } }, () => abort(socket));
    } else if (way === 2) {
      socket.emit("frobnicate", { what: "unknown event" });
      socket.timeout(10000).emit("subscribe", "garbage", (err, res) => {
        if (!err && res && res.ok === false) refused++;
        socket.disconnect();
      });
    } else {
      abort(socket);
    }
  };
  const one = (i) =>
    new Promise((resolve) => {
      const socket = connectOnce(options.url, options.auth ?? {});
      socket.on("connect", () => {
        ok++;
        leave(socket, i, resolve);
      });
      socket.on("connect_error", () => {
        failed++;
        socket.close();
        resolve();
      });
    });
  const worker = async () => {
    while (started < total) {
      const i = started++;
      await one(i);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  out({ t: "storm", ok, failed, refused, stuck, ms: Math.round(now() - t0) });
  exit(0);
} else if (mode === "hold") {
  const total = options.total ?? 100;
  const sockets = [];
  let ok = 0;
  let failed = 0;
  const batch = options.concurrency ?? 100;
  for (let i = 0; i < total; i += batch) {
    const n = Math.min(batch, total - i);
    await Promise.all(
      Array.from({ length: n }, () =>
        new Promise((resolve) => {
          const socket = connectOnce(options.url, options.auth ?? {});
          sockets.push(socket);
          socket.on("connect", () => { ok++; resolve(); });
          socket.on("connect_error", () => { failed++; resolve(); });
        }),
      ),
    );
  }
  out({ t: "held", ok, failed });
  process.stdin.resume();
  process.stdin.on("end", () => {
    for (const s of sockets) s.disconnect();
    out({ t: "released" });
    setTimeout(() => exit(0), 200);
  });
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
