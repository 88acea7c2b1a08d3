// Unit tests of the dashboard's state logic (dashboard/orders.js), run with
// `node --test` by tests/it/dashboard_assets.rs.
//
// dashboard/ has no package.json (it is served, not installed), so Node
// would read orders.js as CommonJS; import it as an ES module from source.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const source = readFileSync(new URL('../../dashboard/orders.js', import.meta.url), 'utf8');
const { OrderBook, SnapshotFilter, parseSnapshot, xidPrecedes, snapshotSees, maxId, compareIds } =
  await import(`data:text/javascript,${encodeURIComponent(source)}`);

const id = (lsn, ordinal = 0) =>
  `${lsn.toString(16).toUpperCase().padStart(16, '0')}-${String(ordinal).padStart(10, '0')}`;

function order(n, status = 'pending', extra = {}) {
  return {
    id: n,
    customer_name: `c${n}`,
    product_name: `p${n}`,
    status,
    created_at: '2026-11-22T05:00:00',
    updated_at: '2026-11-22T05:00:00',
    ...extra,
  };
}

function change(op, eventId, n, fields = {}, xid = 1000) {
  const row = op === 'delete' || op === 'truncate' ? null : order(n, fields.status, fields);
  return {
    id: eventId,
    op,
    schema: 'public',
    table: 'orders',
    key: op === 'truncate' ? null : { id: n },
    new: row,
    old: null,
    xid,
    commit_time: '2026-11-22T05:04:10.580065Z',
  };
}

test('event ids sort as strings in commit order', () => {
  assert.ok(id(0x16b3800, 3) < id(0x16b3800, 10));
  assert.ok(id(0xffff, 9) < id(0x10000, 0));
  assert.equal(maxId(null, id(5)), id(5));
  assert.equal(maxId(id(7), id(5)), id(7));
});

test('order ids compare numerically, beyond 2^53 too', () => {
  assert.ok(compareIds(9, 10) < 0);
  assert.ok(compareIds('9007199254740993', '9007199254740992') > 0);
  assert.equal(compareIds(42, '42'), 0);
});

test('applies inserts, updates and deletes by key, each once', () => {
  const book = new OrderBook();
  book.load([order(1), order(2)]);
  assert.deepEqual(book.apply(change('insert', id(10), 3)), { op: 'insert', id: '3', order: order(3) });
  const update = { ...change('update', id(11), 1, { status: 'shipped' }), changed: ['status', 'updated_at'] };
  const applied = book.apply(update);
  assert.equal(applied.op, 'update');
  assert.deepEqual(applied.changed, ['status', 'updated_at']);
  assert.equal(book.get(1).status, 'shipped');
  // The same event again (redelivery), and an older one: ignored.
  assert.equal(book.apply(update), null);
  assert.equal(book.apply(change('update', id(10, 5), 1, { status: 'cancelled' })), null);
  assert.equal(book.get(1).status, 'shipped');
  assert.deepEqual(book.apply(change('delete', id(12), 2)), { op: 'delete', id: '2' });
  assert.equal(book.size, 2);
  assert.deepEqual(book.sorted().map((o) => o.id), [3, 1]);
});

test('a delete leaves a tombstone that a stale insert cannot pass', () => {
  const book = new OrderBook();
  book.load([order(1)]);
  book.apply(change('delete', id(20), 1));
  assert.equal(book.apply(change('insert', id(19), 1)), null);
  assert.equal(book.get(1), undefined);
  // A newer insert with the same key (ids can be reused by hand) is applied.
  assert.equal(book.apply(change('insert', id(21), 1)).op, 'insert');
});

test('an update without a changed list is diffed, and unchanged TOAST columns are kept', () => {
  const book = new OrderBook();
  book.load([order(1, 'pending', { note: 'long text' })]);
  const event = change('update', id(30), 1, { status: 'processing' });
  delete event.new.note; // not resent by Postgres
  const applied = book.apply(event);
  assert.deepEqual(applied.changed, ['status']);
  assert.equal(book.get(1).note, 'long text');
});

test('a replayed insert of a listed row changes nothing visible', () => {
  const book = new OrderBook();
  book.load([order(1)]);
  const applied = book.apply(change('insert', id(40), 1));
  assert.equal(applied.op, 'update');
  assert.deepEqual(applied.changed, []);
});

test('truncate clears the table and fences older events', () => {
  const book = new OrderBook();
  book.load([order(1), order(2)]);
  const truncate = change('truncate', id(50), 0);
  assert.deepEqual(book.apply(truncate).ids.sort(), ['1', '2']);
  assert.equal(book.size, 0);
  assert.equal(book.apply(change('insert', id(49), 7)), null);
  assert.equal(book.apply(change('insert', id(51), 7)).op, 'insert');
});

test('events of other tables are not applied', () => {
  const book = new OrderBook();
  assert.equal(book.apply({ ...change('insert', id(1), 1), table: 'customers' }), null);
  assert.equal(book.size, 0);
});

test('snapshots parse to the low 32 bits and compare with wraparound', () => {
  const s = parseSnapshot('740:745:741,743');
  assert.deepEqual([s.xmin, s.xmax, [...s.xip]], [740, 745, [741, 743]]);
  assert.equal(parseSnapshot('10:10:').xip.size, 0);
  // Epoch 1: 2^32 + 5.
  assert.equal(parseSnapshot('4294967301:4294967302:').xmin, 5);
  assert.throws(() => parseSnapshot('garbage'));
  assert.ok(xidPrecedes(4294967290, 5)); // across the wrap
  assert.ok(!xidPrecedes(5, 4294967290));
  assert.ok(snapshotSees(s, 739));
  assert.ok(snapshotSees(s, 742));
  assert.ok(!snapshotSees(s, 741)); // in progress
  assert.ok(!snapshotSees(s, 745)); // at xmax
});

test('the hand-off filter admits exactly what the listing does not show', () => {
  const filter = new SnapshotFilter('740:745:741');
  const ev = (xid) => ({ xid });
  assert.equal(filter.admits(ev(739)), false); // committed before the listing
  assert.equal(filter.admits(ev(742)), false);
  assert.equal(filter.admits(ev(741)), true); // was in progress
  assert.equal(filter.admits(ev(746)), true); // started after: filter off
  assert.equal(filter.active, false);
  assert.equal(filter.admits(ev(742)), true);
});
