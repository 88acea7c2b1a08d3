// walcast-client: a table's rows, kept live from walcast's change stream.
//
// How a feed stays exact (walcast's contract, sections 3 and 4):
//
// 1. It loads every page of the table's listing (`GET /orders`, following
//    `next_after`); each page carries the `snapshot` it was read with.
// 2. It connects Socket.IO with the first page's snapshot: the gateway
//    sends every change that snapshot does not see, then `ready`. A row from
//    a later page ignores the changes its own page's snapshot saw, so every
//    change is applied exactly once.
// 3. Each row remembers the id of the last change applied to it: a change
//    delivered again (at-least-once delivery) is dropped by its id. The
//    newest id received is the cursor: a reconnect sends `since` and the
//    gateway replays what was missed.
// 4. On `resync` (the gateway no longer holds what the cursor needs) the
//    socket stays attached: changes are queued while the listing reloads,
//    then go through the new listing's snapshots, and the feed is live
//    again. If the socket drops meanwhile, the reload connects afresh.
//
// Status: connecting → catching-up → live; resyncing while a reload after
// `resync` runs; offline while the connection is down. "live" only after
// the gateway's `ready` for the current connection.
//
// It has no dependency but socket.io-client, which it takes from
// `options.io`, else from a global `io` (the browser bundle), else by
// importing the `socket.io-client` package (Node).

const DEFAULT_PAGE_SIZE = 500;
/** Changes queued during a resync reload beyond this mean a fresh connect. */
const MAX_QUEUED = 20000;
const REQUEST_TIMEOUT_MS = 15000;

// --- Snapshots -----------------------------------------------------------

/**
 * Parses `pg_current_snapshot()` text ("xmin:xmax:xip,xip,..."). Events
 * carry 32-bit xids while the snapshot has 64-bit ones: keep the low 32
 * bits, and compare with wraparound arithmetic as Postgres does.
 */
export function parseSnapshot(text) {
  const match = /^(\d+):(\d+):([\d,]*)$/.exec(String(text ?? '').trim());
  if (!match) throw new Error(`invalid snapshot ${JSON.stringify(text)}`);
  const low32 = (digits) => Number(BigInt(digits) & 0xffffffffn);
  const xip = match[3] === '' ? [] : match[3].split(',').map(low32);
  return { xmin: low32(match[1]), xmax: low32(match[2]), xip: new Set(xip) };
}

/** Whether 32-bit xid `a` is older than `b`, modulo 2^32. */
export function xidPrecedes(a, b) {
  return ((a - b) | 0) < 0;
}

/** Whether a listing read with `snapshot` already shows transaction `xid`. */
export function snapshotSees(snapshot, xid) {
  const x = Number(xid) >>> 0;
  return xidPrecedes(x, snapshot.xmax) && !snapshot.xip.has(x);
}

/** The larger of two event ids (ids sort as strings in commit order). */
export function maxId(a, b) {
  if (a == null) return b ?? null;
  if (b == null) return a;
  return b > a ? b : a;
}

// --- Rows, without I/O -----------------------------------------------------

function compareValues(a, b) {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  const [x, y] = [String(a), String(b)];
  // Integers as text (int8 beyond 2^53 never goes through a float).
  if (/^-?\d+$/.test(x) && /^-?\d+$/.test(y)) {
    const d = BigInt(x) - BigInt(y);
    return d < 0n ? -1 : d > 0n ? 1 : 0;
  }
  return x < y ? -1 : x > y ? 1 : 0;
}

function sameValue(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * One table's rows as a listing and change events make them. Pure: the
 * hand-off rules of the contract, testable without a server.
 */
export class RowBook {
  /**
   * @param {object} options
   * @param {string} options.table  "schema.table"
   * @param {string[]} options.key  the key columns
   * @param {string[]|null} [options.fields]  keep only these columns (and the key)
   * @param {object[]|null} [options.keys]  keep only these rows (key objects)
   */
  constructor({ table, key, fields = null, keys = null }) {
    this.table = table;
    this.keyColumns = key;
    this.fields = fields ? [...new Set([...key, ...fields])] : null;
    this.only = keys ? new Set(keys.map((k) => this.keyOf(k))) : null;
    this.rows = new Map(); // key text -> { row, eventId, snapshot }
    this.tombstones = new Map(); // key text -> id of the deleting event
    this.truncatedAt = null;
  }

  /** The text a row or key object is held under. */
  keyOf(object) {
    return JSON.stringify(this.keyColumns.map((column) => object?.[column] ?? null));
  }

  /** Whether a change event is about this table. */
  concerns(event) {
    return event != null && `${event.schema}.${event.table}` === this.table;
  }

  project(row) {
    if (!row || !this.fields) return row ? { ...row } : row;
    const out = {};
    for (const column of this.fields) if (column in row) out[column] = row[column];
    return out;
  }

  /**
   * Replaces everything with a listing: `pages` of `{ rows, snapshot }`
   * (snapshot text). Each row keeps its page's snapshot for the hand-off.
   */
  load(pages) {
    this.rows = new Map();
    this.tombstones.clear();
    this.truncatedAt = null;
    for (const page of pages) {
      const snapshot = parseSnapshot(page.snapshot);
      for (const row of page.rows) {
        const key = this.keyOf(row);
        if (this.only && !this.only.has(key)) continue;
        this.rows.set(key, { row: this.project(row), eventId: null, snapshot });
      }
    }
  }

  get size() {
    return this.rows.size;
  }

  get(key) {
    const object = key !== null && typeof key === 'object' ? key : { [this.keyColumns[0]]: key };
    return this.rows.get(this.keyOf(object))?.row;
  }

  /** The rows, in key order. */
  sorted() {
    const rows = [...this.rows.values()].map((entry) => entry.row);
    return rows.sort((a, b) => {
      for (const column of this.keyColumns) {
        const d = compareValues(a[column], b[column]);
        if (d !== 0) return d;
      }
      return 0;
    });
  }

  /**
   * Applies one change event. Returns what changed, or null when the event
   * is not for these rows or was applied already:
   *   { op, key, old, new, changed, event }
   * `old`/`new` are the row before and after (null when absent); for a
   * truncate, `old` is null and `removed` lists the rows it removed.
   */
  apply(event) {
    if (!this.concerns(event) || typeof event.id !== 'string') return null;
    if (this.truncatedAt !== null && event.id <= this.truncatedAt) return null;
    if (event.op === 'truncate') {
      const removed = [...this.rows.values()].map((entry) => entry.row);
      for (const key of this.rows.keys()) this.tombstones.set(key, event.id);
      this.rows.clear();
      this.truncatedAt = event.id;
      return { op: 'truncate', key: null, old: null, new: null, changed: [], removed, event };
    }
    if (!event.key) return null;
    const key = this.keyOf(event.key);
    if (this.only && !this.only.has(key)) return null;
    const entry = this.rows.get(key);
    const last = entry ? entry.eventId : this.tombstones.get(key) ?? null;
    if (last !== null && event.id <= last) return null;
    // A row from the listing: its page shows every transaction its
    // snapshot sees.
    if (entry && entry.eventId === null && snapshotSees(entry.snapshot, event.xid)) return null;
    const old = entry?.row ?? null;
    switch (event.op) {
      case 'insert':
      case 'update':
      case 'read': {
        // An oversize event has no row: keep the one held until the feed
        // reads it again over HTTP.
        const incoming = event.new ?? (event.oversize ? null : undefined);
        if (incoming === undefined) return null;
        // Columns Postgres did not resend (unchanged TOAST) keep their value.
        const row = this.project({ ...(old ?? {}), ...(incoming ?? event.key) });
        this.rows.set(key, { row, eventId: event.id, snapshot: null });
        this.tombstones.delete(key);
        const changed = !old
          ? Object.keys(row)
          : Array.isArray(event.changed)
            ? event.changed.filter((column) => column in row)
            : Object.keys(row).filter((column) => !sameValue(row[column], old[column]));
        return { op: event.op, key: event.key, old, new: row, changed, event };
      }
      case 'delete':
        this.rows.delete(key);
        this.tombstones.set(key, event.id);
        return old ? { op: 'delete', key: event.key, old, new: null, changed: [], event } : null;
      default:
        return null;
    }
  }

  /** Puts a row read over HTTP after an oversize event (`null`: gone). */
  refresh(key, eventId, row) {
    const text = this.keyOf(key);
    const entry = this.rows.get(text);
    if (!entry || entry.eventId !== eventId) return null; // a newer change won
    const old = entry.row;
    if (row === null) {
      this.rows.delete(text);
      this.tombstones.set(text, eventId);
      return { op: 'delete', key, old, new: null, changed: [], event: null };
    }
    const fresh = this.project(row);
    entry.row = fresh;
    const changed = Object.keys(fresh).filter((column) => !sameValue(fresh[column], old[column]));
    return { op: 'update', key, old, new: fresh, changed, event: null };
  }
}

// --- The feed ---------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** 0.5 s, 1 s, 2 s … up to 10 s, with jitter so many clients do not align. */
function backoff(attempt) {
  const base = Math.min(10000, 500 * 2 ** Math.min(attempt, 5));
  return base / 2 + Math.random() * (base / 2);
}

/** An HTTP or connection failure, with the API's error code when there is one. */
export class WalcastError extends Error {
  constructor(kind, message, detail = {}) {
    super(message);
    this.name = 'WalcastError';
    this.kind = kind; // 'http' | 'unreachable' | 'unauthorized' | 'refused' | 'subscribe'
    Object.assign(this, detail);
  }
}

async function socketIoFactory(given) {
  if (given) return given;
  if (typeof globalThis.io === 'function') return globalThis.io;
  try {
    const module = await import('socket.io-client');
    return module.io ?? module.default;
  } catch {
    throw new WalcastError(
      'refused',
      'socket.io-client not found: pass options.io, or load its browser bundle before walcast-client',
    );
  }
}

/**
 * A live table. Create it with {@link feed} or a preset ({@link orders});
 * it starts loading at once.
 */
export class Feed {
  constructor(options) {
    const key = options.key ?? 'id';
    this.options = {
      url: (options.url ?? '').replace(/\/+$/, ''),
      path: options.path,
      field: options.field ?? options.path.split('/').filter(Boolean).pop(),
      pageSize: options.pageSize ?? DEFAULT_PAGE_SIZE,
      token: options.token ?? null,
      fields: options.fields ?? null,
      old: options.old ?? true,
      keys: options.keys ?? null,
      io: options.io ?? null,
      fetch: options.fetch ?? globalThis.fetch.bind(globalThis),
      transports: options.transports ?? ['websocket', 'polling'],
    };
    this.book = new RowBook({
      table: options.table,
      key: Array.isArray(key) ? key : [key],
      fields: this.options.fields,
      keys: this.options.keys,
    });
    this.table = options.table;
    this.listeners = new Map();
    this.status = 'connecting';
    this.socket = null;
    this.snapshot = null; // the listing's first snapshot, for the handshake
    this.lastId = null; // newest change id received since that listing
    this.queued = null; // changes received while a resync reload runs
    this.readyHere = false; // `ready` came on the current connection
    this.loaded = false;
    this.generation = 0; // of listing loads; a newer one cancels older ones
    this.refusals = 0;
    this.closed = false;
    this.extra = []; // subscriptions asked for with subscribe()
    this.timers = new Set();
    this.start();
  }

  // --- What a user sees ---

  /** The current rows, in key order. */
  rows() {
    return this.book.sorted();
  }

  /** One row by key (a value for a one-column key, or a key object). */
  get(key) {
    return this.book.get(key);
  }

  get size() {
    return this.book.size;
  }

  /**
   * Listens to `change` ({op, key, old, new, changed, event}), `ready`
   * ({latest_id}), `status` (the new status), `load` (rows; after every
   * listing), `event` (every change event received, whatever its table),
   * `resync` ({reason, latest_id}), `error` (a WalcastError). Returns a function that stops listening.
   */
  on(name, listener) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(listener);
    return () => this.off(name, listener);
  }

  off(name, listener) {
    this.listeners.get(name)?.delete(listener);
  }

  /** Resolves when the feed is live (at once if it is). */
  untilLive() {
    if (this.status === 'live') return Promise.resolve();
    return new Promise((resolve) => {
      const off = this.on('status', (status) => {
        if (status === 'live') {
          off();
          resolve();
        }
      });
    });
  }

  /**
   * Asks the gateway for more, or smaller, events: `{table?, key?,
   * fields?, old?}` as in the contract's `subscribe`. Kept and sent again
   * on every reconnect. Resolves with the gateway's ack.
   */
  subscribe(target) {
    const payload = { table: this.table, ...target };
    this.extra.push(payload);
    return this.send('subscribe', payload);
  }

  /** Undoes a {@link subscribe} with the same target. */
  unsubscribe(target) {
    const payload = { table: this.table, ...target };
    const same = JSON.stringify(payload);
    this.extra = this.extra.filter((t) => JSON.stringify(t) !== same);
    return this.send('unsubscribe', payload);
  }

  /** Reconnects (e.g. with a new token); reloads first if nothing loaded. */
  reconnect() {
    if (this.closed) return;
    if (this.queued !== null) return; // the reload in flight connects
    if (!this.loaded) {
      this.reload();
      return;
    }
    this.socket?.disconnect();
    this.connect();
  }

  /** Stops everything; the feed emits nothing more. */
  close() {
    this.closed = true;
    this.generation += 1;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.socket?.disconnect();
    this.socket?.removeAllListeners?.();
    this.setStatus('offline');
    this.listeners.clear();
  }

  // --- Inside ---

  emit(name, value) {
    for (const listener of [...(this.listeners.get(name) ?? [])]) {
      try {
        listener(value);
      } catch (error) {
        // A listener's bug must not stop the feed.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit('status', status);
  }

  later(ms, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(timer);
  }

  token() {
    const token = this.options.token;
    return typeof token === 'function' ? token() : token;
  }

  async start() {
    try {
      this.io = await socketIoFactory(this.options.io);
    } catch (error) {
      this.setStatus('offline');
      this.emit('error', error);
      return;
    }
    this.reload();
  }

  /** GET `path`; with `missing`, a 404 answers null. */
  async request(path, missing = false) {
    const headers = { Accept: 'application/json' };
    const token = this.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await this.options.fetch(`${this.options.url}${path}`, {
        headers,
        cache: 'no-store',
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (error) {
      throw new WalcastError('unreachable', `walcast is unreachable: ${error?.message ?? error}`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // a proxy's HTML error page, say: keep the status
    }
    if (response.status === 404 && missing) return null;
    if (!response.ok) {
      const detail = body?.error ?? {};
      throw new WalcastError(
        response.status === 401 ? 'unauthorized' : 'http',
        detail.message ?? `GET ${path}: HTTP ${response.status}`,
        { status: response.status, code: detail.code },
      );
    }
    return body;
  }

  /** Every page of the listing, each with its snapshot. */
  async fetchListing() {
    const pages = [];
    let after = null;
    do {
      const query = new URLSearchParams({ limit: String(this.options.pageSize) });
      if (after !== null) query.set('after', String(after));
      const page = await this.request(`${this.options.path}?${query}`);
      const rows = page?.[this.options.field];
      if (!Array.isArray(rows) || typeof page.snapshot !== 'string') {
        throw new WalcastError('http', `GET ${this.options.path}: no "${this.options.field}" array or no snapshot`);
      }
      pages.push({ rows, snapshot: page.snapshot });
      after = page.next_after ?? null;
    } while (after !== null);
    return pages;
  }

  /**
   * Loads the listing (retrying until it works or a newer load starts),
   * then hands off: through the queue when the socket stayed attached (a
   * resync), else by connecting with the listing's snapshot.
   */
  async reload() {
    const generation = ++this.generation;
    let pages;
    for (let attempt = 0; ; attempt += 1) {
      try {
        pages = await this.fetchListing();
        break;
      } catch (error) {
        if (generation !== this.generation) return;
        this.emit('error', error);
        if (this.status === 'live' || this.status === 'catching-up') this.setStatus('offline');
        await sleep(backoff(attempt));
        if (generation !== this.generation) return;
      }
    }
    if (generation !== this.generation) return;
    this.book.load(pages);
    this.loaded = true;
    this.snapshot = pages[0].snapshot;
    this.lastId = null;
    this.emit('load', this.rows());
    if (this.queued !== null && this.socket?.connected) {
      const events = this.queued;
      this.queued = null;
      for (const event of events) this.process(event);
      if (this.readyHere) {
        this.setStatus('live');
        this.emit('ready', { latest_id: this.lastId });
      } else {
        this.setStatus('catching-up');
      }
    } else {
      this.dropQueue();
      this.socket?.disconnect();
      this.connect();
    }
  }

  handshake() {
    const auth = {};
    const token = this.token();
    if (token) auth.token = token;
    if (this.lastId !== null) auth.since = this.lastId;
    else if (this.snapshot !== null) auth.snapshot = this.snapshot;
    return auth;
  }

  connect() {
    if (this.closed) return;
    if (!this.socket) this.socket = this.createSocket();
    this.socket.connect();
  }

  createSocket() {
    const options = {
      autoConnect: false,
      transports: this.options.transports,
      tryAllTransports: true,
      // Evaluated on every attempt, so a reconnect sends the newest cursor.
      auth: (callback) => callback(this.handshake()),
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
    };
    const socket = this.options.url ? this.io(this.options.url, options) : this.io(options);
    socket.on('connect', () => {
      this.refusals = 0;
      this.readyHere = false;
      if (this.queued === null) this.setStatus('catching-up');
      this.sendSubscriptions();
    });
    socket.on('change', (event) => this.onChange(event));
    socket.on('ready', (payload) => this.onReady(payload));
    socket.on('resync', (payload) => {
      this.setStatus('resyncing');
      this.queued ??= [];
      this.emit('resync', payload ?? {});
      this.reload();
    });
    socket.on('disconnect', (reason) => this.onDisconnect(reason));
    socket.on('connect_error', (error) => this.onConnectError(error));
    return socket;
  }

  sendSubscriptions() {
    const { fields, old, keys } = this.options;
    const shape = {};
    if (fields) shape.fields = fields;
    if (old === false) shape.old = false;
    const mine = keys ? keys.map((key) => ({ table: this.table, key, ...shape })) : [{ table: this.table, ...shape }];
    for (const payload of [...mine, ...this.extra]) this.send('subscribe', payload);
  }

  send(event, payload) {
    if (!this.socket?.connected) return Promise.resolve({ ok: false, error: 'not connected; sent on connect' });
    return new Promise((resolve) => {
      this.socket.timeout(REQUEST_TIMEOUT_MS).emit(event, payload, (error, ack) => {
        const answer = error ? { ok: false, error: String(error.message ?? error) } : ack;
        if (!answer?.ok) {
          this.emit('error', new WalcastError('subscribe', `${event} ${JSON.stringify(payload)}: ${answer?.error}`));
        }
        resolve(answer);
      });
    });
  }

  onReady(payload) {
    this.readyHere = true;
    if (this.queued !== null) return; // live once the reload is through
    // Everything up to latest_id that this socket wants was sent.
    this.lastId = maxId(this.lastId, payload?.latest_id ?? null);
    this.setStatus('live');
    this.emit('ready', { latest_id: payload?.latest_id ?? null });
  }

  onChange(event) {
    if (!event || typeof event !== 'object') return;
    if (this.queued !== null) {
      this.queued.push(event);
      if (this.queued.length > MAX_QUEUED) {
        // The reload is not keeping up: drop the queue; it connects afresh.
        this.dropQueue();
        this.socket.disconnect();
      }
      return;
    }
    this.process(event);
  }

  /** Abandons the resync queue: the next listing covers its changes. */
  dropQueue() {
    const events = this.queued ?? [];
    this.queued = null;
    for (const event of events) this.emit('event', event);
  }

  process(event) {
    this.lastId = maxId(this.lastId, event.id);
    this.emit('event', event);
    const result = this.book.apply(event);
    if (!result) return;
    this.emit('change', result);
    if (event.oversize && (event.op === 'insert' || event.op === 'update' || event.op === 'read')) {
      this.reread(event);
    }
  }

  /** Reads a row again after an oversize event (one-column keys). */
  async reread(event) {
    if (this.book.keyColumns.length !== 1) return;
    const value = event.key[this.book.keyColumns[0]];
    try {
      const row = await this.request(`${this.options.path}/${encodeURIComponent(value)}`, true);
      const result = this.book.refresh(event.key, event.id, row);
      if (result) this.emit('change', result);
    } catch (error) {
      this.emit('error', error);
    }
  }

  onDisconnect(reason) {
    this.readyHere = false;
    if (this.closed) return;
    if (this.queued !== null) {
      // The queue has a gap now; stop the automatic reconnect (it would
      // send a cursor from before the reload) and let the reload connect.
      this.dropQueue();
      this.socket.disconnect();
      return;
    }
    if (reason === 'io client disconnect') return;
    this.setStatus('offline');
    if (reason === 'io server disconnect') {
      // Dropped by the gateway (a socket that read too slowly): come back
      // with the cursor, which loses nothing.
      this.later(backoff(this.refusals++), () => this.connect());
    }
  }

  onConnectError(error) {
    const message = String(error?.message ?? error);
    if (this.socket.active) {
      // Network trouble; socket.io-client retries by itself.
      if (this.status !== 'resyncing') this.setStatus('offline');
      return;
    }
    // The gateway refused the handshake.
    this.refusals += 1;
    this.setStatus('offline');
    if (message.startsWith('unauthorized')) {
      // A wrong token stays wrong: wait for reconnect() with a new one.
      this.emit('error', new WalcastError('unauthorized', message));
      return;
    }
    if (message.startsWith('auth.since') || message.startsWith('auth.snapshot')) {
      this.snapshot = null;
      this.lastId = null;
      this.later(backoff(this.refusals), () => this.reload());
      return;
    }
    this.emit('error', new WalcastError('refused', message));
    this.later(backoff(this.refusals), () => this.connect());
  }
}

/**
 * A live table.
 *
 * @param {object} options
 * @param {string} options.table  "schema.table" of the change events
 * @param {string} options.path  the listing's path, e.g. "/orders"
 * @param {string|string[]} [options.key]  key column(s); "id"
 * @param {string} [options.url]  walcast's base URL; the page's origin
 */
export function feed(options) {
  if (!options?.table || !options?.path) throw new TypeError('walcast.feed needs table and path');
  return new Feed(options);
}

/** The `orders` preset: `GET /orders`, key `id`, table public.orders. */
export function orders(options = {}) {
  return feed({ table: 'public.orders', path: '/orders', key: 'id', field: 'orders', ...options });
}

const walcast = { feed, orders, Feed, RowBook, WalcastError, parseSnapshot, snapshotSees, xidPrecedes, maxId };
export default walcast;
