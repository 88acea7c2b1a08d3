// A walcast-client feed (clients/js) in Node, driven by tests/js_client.rs.
//
// Usage: node feed-client.mjs '{"url":"http://127.0.0.1:8080","pageSize":200}'
//
// Prints one JSON line per happening on stdout:
//   {"t":"status","status":"catching-up"}      every status change
//   {"t":"ready","latest_id":...}             the feed caught up
//   {"t":"until-live"}                       feed.untilLive() resolved
//   {"t":"load","rows":n}                     a listing was loaded
//   {"t":"resync","reason":...}               the gateway sent resync
//   {"t":"error","kind":...,"message":...}    an error the feed reported
//   {"t":"rows","status":...,"rows":[...],"changes":n,"events":n}
// and reads commands on stdin, one JSON object per line:
//   {"cmd":"rows"}    prints the current rows
//   {"cmd":"subscribe","target":{...}}  feed.subscribe; prints {"t":"ack","ack":...}
//   {"cmd":"drop"}    cuts the connection and keeps it down
//   {"cmd":"resume"}  lets it reconnect
//   {"cmd":"close"}   closes the feed and exits
//
// socket.io-client comes from this directory's node_modules and is handed
// to the library, which has no node_modules of its own here.

import { io } from 'socket.io-client';
import readline from 'node:readline';
import walcast from '../../clients/js/walcast-client.js';

const options = JSON.parse(process.argv[2] ?? '{}');
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
// process.exit drops what a piped stdout has not written yet; exit only
// once every line printed so far is out.
const exit = (code) => process.stdout.write('', () => process.exit(code));

const feed = walcast.orders({
  url: options.url,
  token: options.token,
  pageSize: options.pageSize,
  fields: options.fields,
  old: options.old,
  keys: options.keys,
  io,
});
let changes = 0;
let events = 0;
feed.on('status', (status) => out({ t: 'status', status }));
feed.on('ready', (ready) => out({ t: 'ready', latest_id: ready.latest_id }));
feed.on('load', (rows) => out({ t: 'load', rows: rows.length }));
feed.on('resync', (payload) => out({ t: 'resync', reason: payload.reason ?? null }));
feed.on('error', (error) => out({ t: 'error', kind: error.kind, message: error.message }));
feed.on('change', () => changes++);
feed.on('event', () => events++);
feed.untilLive().then(() => out({ t: 'until-live' }));

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.cmd === 'rows') {
    out({ t: 'rows', status: feed.status, rows: feed.rows(), changes, events });
  } else if (cmd.cmd === 'subscribe') {
    feed.subscribe(cmd.target).then((ack) => out({ t: 'ack', ack }));
  } else if (cmd.cmd === 'drop') {
    // A network failure: the connection ends without a goodbye and does
    // not come back until "resume".
    feed.socket.io.reconnection(false);
    feed.socket.io.engine.close();
  } else if (cmd.cmd === 'resume') {
    feed.socket.io.reconnection(true);
    feed.reconnect();
  } else if (cmd.cmd === 'close') {
    feed.close();
    exit(0);
  }
});
process.stdin.on('end', () => {
  feed.close();
  exit(0);
});
