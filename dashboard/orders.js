// The dashboard's state, without DOM or network, so that it can be tested
// in Node (tests/e2e/orders.test.mjs): the rows of public.orders as the
// listing and the change events make them, and the snapshot rule that
// decides which events a listing already contains (contract section 3).

/** The statuses the table's CHECK constraint allows, in lifecycle order. */
export const STATUSES = ['pending', 'processing', 'shipped', 'delivered', 'cancelled'];

/** Whether a change event is about public.orders. */
export function isOrdersEvent(event) {
  return event && event.schema === 'public' && event.table === 'orders';
}

/** The larger of two event ids (ids sort as strings in commit order). */
export function maxId(a, b) {
  if (a == null) return b ?? null;
  if (b == null) return a;
  return b > a ? b : a;
}

// --- Snapshots ---------------------------------------------------------------

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
  return xidPrecedes(xid, snapshot.xmax) && !snapshot.xip.has(xid);
}

/**
 * The hand-off from a listing to a change stream that was already running
 * when the listing was read (after a `resync`, the socket stays attached
 * while the page reloads): admits exactly the events the listing does not
 * show. The same rule the gateway applies to a `snapshot` handshake; once
 * an event of a transaction that started after the snapshot went by, no
 * later one can be visible to it, and the filter switches itself off.
 */
export class SnapshotFilter {
  constructor(snapshot) {
    this.snapshot = typeof snapshot === 'string' ? parseSnapshot(snapshot) : snapshot;
    this.active = true;
  }

  admits(event) {
    if (!this.active) return true;
    const xid = Number(event.xid) >>> 0;
    if (!xidPrecedes(xid, this.snapshot.xmax)) {
      this.active = false;
      return true;
    }
    return !snapshotSees(this.snapshot, xid);
  }
}

// --- Rows ----------------------------------------------------------------------

const keyOf = (id) => String(id);

/** Compares order ids numerically without going through floats. */
export function compareIds(a, b) {
  const [x, y] = [keyOf(a), keyOf(b)];
  return x.length - y.length || (x < y ? -1 : x > y ? 1 : 0);
}

function sameValue(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * The orders, by id, each with the id of the last event applied to it. An
 * event whose id is not greater than that (a redelivery, or a replay that
 * overlaps the listing) is ignored; deleted rows keep a tombstone so that a
 * stale insert cannot bring them back.
 */
export class OrderBook {
  constructor() {
    this.rows = new Map(); // key -> { order, eventId }
    this.tombstones = new Map(); // key -> id of the deleting event
    this.truncatedAt = null; // id of the newest truncate applied
  }

  /** Replaces everything with a listing's orders. */
  load(orders) {
    this.rows = new Map(orders.map((order) => [keyOf(order.id), { order, eventId: null }]));
    this.tombstones.clear();
    this.truncatedAt = null;
  }

  get size() {
    return this.rows.size;
  }

  get(id) {
    return this.rows.get(keyOf(id))?.order;
  }

  /** The orders, newest (largest id) first. */
  sorted() {
    return [...this.rows.values()]
      .map((row) => row.order)
      .sort((a, b) => compareIds(b.id, a.id));
  }

  /**
   * Applies one change event of public.orders. Returns what changed, for
   * the view, or null when the event was ignored:
   *   { op: 'insert', id, order }
   *   { op: 'update', id, order, changed: [column...] }
   *   { op: 'delete', id }
   *   { op: 'truncate', ids: [id...] }
   */
  apply(event) {
    if (!isOrdersEvent(event) || typeof event.id !== 'string') return null;
    if (this.truncatedAt !== null && event.id <= this.truncatedAt) return null;
    if (event.op === 'truncate') {
      const ids = [...this.rows.keys()];
      for (const key of ids) this.tombstones.set(key, event.id);
      this.rows.clear();
      this.truncatedAt = event.id;
      return { op: 'truncate', ids };
    }
    const id = event.key?.id;
    if (id === undefined || id === null) return null;
    const key = keyOf(id);
    const row = this.rows.get(key);
    const last = row ? row.eventId : this.tombstones.get(key) ?? null;
    if (last !== null && event.id <= last) return null;

    switch (event.op) {
      case 'insert':
      case 'update': {
        if (!event.new) return null;
        // Columns Postgres did not resend (unchanged TOAST) keep their value.
        const order = { ...(row?.order ?? {}), ...event.new };
        this.rows.set(key, { order, eventId: event.id });
        this.tombstones.delete(key);
        if (!row) return { op: 'insert', id: key, order };
        const changed = Array.isArray(event.changed)
          ? event.changed.filter((column) => column in order)
          : Object.keys(order).filter((column) => !sameValue(order[column], row.order[column]));
        return { op: 'update', id: key, order, changed };
      }
      case 'delete':
        this.rows.delete(key);
        this.tombstones.set(key, event.id);
        return row ? { op: 'delete', id: key } : null;
      default:
        return null;
    }
  }
}
