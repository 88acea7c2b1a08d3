// Unit tests of walcast-client's hand-off rules (RowBook and snapshots),
// without a server: `node --test clients/js/test/`. The library against a
// real walcast is tested by tests/js_client.rs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RowBook, parseSnapshot, xidPrecedes, snapshotSees, maxId } from '../walcast-client.js';

const id = (lsn, ordinal = 0) =>
  `${lsn.toString(16).toUpperCase().padStart(16, '0')}-${String(ordinal).padStart(10, '0')}`;

function order(n, status = 'pending', extra = {}) {
  return { id: n, customer_name: `c${n}`, product_name: `p${n}`, status, updated_at: '2026-11-22T05:00:00', ...extra };
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

const book = (options = {}) => new RowBook({ table: 'public.orders', key: ['id'], ...options });
/** One listing page read with snapshot `s`. */
const page = (rows, s = '900:900:') => ({ rows, snapshot: s });

test('event ids sort as strings in commit order', () => {
  assert.ok(id(0x16b3800, 3) < id(0x16b3800, 10));
  assert.ok(id(0xffff, 9) < id(0x10000, 0));
  assert.equal(maxId(null, id(5)), id(5));
  assert.equal(maxId(id(7), id(5)), id(7));
});

test('rows sort by key numerically, beyond 2^53 too', () => {
  const b = book();
  b.load([page([order(10), order(9), { ...order(0), id: '9007199254740993' }, { ...order(0), id: '9007199254740992' }])]);
  assert.deepEqual(b.sorted().map((o) => String(o.id)), ['9', '10', '9007199254740992', '9007199254740993']);
});

test('applies inserts, updates and deletes by key, each once', () => {
  const b = book();
  b.load([page([order(1), order(2)])]);
  const inserted = b.apply(change('insert', id(10), 3));
  assert.equal(inserted.op, 'insert');
  assert.equal(inserted.old, null);
  assert.deepEqual(inserted.new, order(3));
  const update = { ...change('update', id(11), 1, { status: 'shipped' }), changed: ['status', 'updated_at'] };
  const applied = b.apply(update);
  assert.equal(applied.op, 'update');
  assert.equal(applied.old.status, 'pending');
  assert.equal(applied.new.status, 'shipped');
  assert.deepEqual(applied.changed, ['status', 'updated_at']);
  // The same event again (redelivery), and an older one: ignored.
  assert.equal(b.apply(update), null);
  assert.equal(b.apply(change('update', id(10, 5), 1, { status: 'cancelled' })), null);
  assert.equal(b.get(1).status, 'shipped');
  const deleted = b.apply(change('delete', id(12), 2));
  assert.equal(deleted.op, 'delete');
  assert.equal(deleted.old.id, 2);
  assert.deepEqual(b.sorted().map((o) => o.id), [1, 3]);
});

test('each row of a later page skips what its own snapshot saw', () => {
  const b = book();
  // Page 1 read at 900 (sees xids < 900), page 2 later at 905 (sees < 905
  // but 902, in progress).
  b.load([page([order(1)], '900:900:'), page([order(2, 'shipped')], '900:905:902')]);
  // Transaction 903 committed between the pages: the gateway sends it (the
  // handshake's snapshot, page 1's, does not see it); page 2 shows it.
  assert.equal(b.apply(change('update', id(20), 2, { status: 'shipped' }, 903)), null);
  assert.equal(b.apply(change('update', id(20, 1), 1, { status: 'processing' }, 903)).op, 'update');
  // 902 was in progress when page 2 was read: applied.
  assert.equal(b.apply(change('update', id(21), 2, { status: 'delivered' }, 902)).op, 'update');
  assert.equal(b.get(2).status, 'delivered');
});

test('a delete leaves a tombstone that a stale insert cannot pass', () => {
  const b = book();
  b.load([page([order(1)])]);
  b.apply(change('delete', id(20), 1, {}, 950));
  assert.equal(b.apply(change('insert', id(19), 1, {}, 949)), null);
  assert.equal(b.get(1), undefined);
  assert.equal(b.apply(change('insert', id(21), 1, {}, 951)).op, 'insert');
});

test('an update without a changed list is diffed, and unchanged TOAST columns are kept', () => {
  const b = book();
  b.load([page([order(1, 'pending', { note: 'long text' })])]);
  const event = change('update', id(30), 1, { status: 'processing' });
  delete event.new.note; // not resent by Postgres
  assert.deepEqual(b.apply(event).changed, ['status']);
  assert.equal(b.get(1).note, 'long text');
});

test('fields keep only those columns and the key; keys keep only those rows', () => {
  const b = book({ fields: ['status'], keys: [{ id: 1 }] });
  b.load([page([order(1), order(2)])]);
  assert.deepEqual(b.sorted(), [{ id: 1, status: 'pending' }]);
  assert.equal(b.apply(change('insert', id(40), 2)), null);
  const applied = b.apply({ ...change('update', id(41), 1, { status: 'shipped' }), new: { id: 1, status: 'shipped' } });
  assert.deepEqual(applied.new, { id: 1, status: 'shipped' });
});

test('an oversize event keeps the row until it is read again', () => {
  const b = book();
  b.load([page([order(1)])]);
  const event = { ...change('update', id(45), 1), new: null, oversize: true };
  assert.equal(b.apply(event).new.status, 'pending');
  assert.equal(b.refresh({ id: 1 }, id(45), order(1, 'shipped')).new.status, 'shipped');
  assert.equal(b.refresh({ id: 1 }, id(44), order(1, 'pending')), null); // a newer change won
  assert.equal(b.refresh({ id: 1 }, id(45), null).op, 'delete');
});

test('truncate clears the table and fences older events', () => {
  const b = book();
  b.load([page([order(1), order(2)])]);
  const applied = b.apply(change('truncate', id(50), 0));
  assert.deepEqual(applied.removed.map((o) => o.id).sort(), [1, 2]);
  assert.equal(b.size, 0);
  assert.equal(b.apply(change('insert', id(49), 7)), null);
  assert.equal(b.apply(change('insert', id(51), 7)).op, 'insert');
});

test('events of other tables are not applied; backfill reads are', () => {
  const b = book();
  assert.equal(b.apply({ ...change('insert', id(1), 1), table: 'customers' }), null);
  assert.equal(b.apply(change('read', id(2), 1)).op, 'read');
  assert.equal(b.size, 1);
});

test('snapshots parse to the low 32 bits and compare with wraparound', () => {
  const s = parseSnapshot('740:745:741,743');
  assert.deepEqual([s.xmin, s.xmax, [...s.xip]], [740, 745, [741, 743]]);
  assert.equal(parseSnapshot('10:10:').xip.size, 0);
  assert.equal(parseSnapshot('4294967301:4294967302:').xmin, 5);
  assert.throws(() => parseSnapshot('garbage'));
  assert.ok(xidPrecedes(4294967290, 5)); // across the wrap
  assert.ok(!xidPrecedes(5, 4294967290));
  assert.ok(snapshotSees(s, 739));
  assert.ok(snapshotSees(s, 742));
  assert.ok(!snapshotSees(s, 741)); // in progress
  assert.ok(!snapshotSees(s, 745)); // at xmax
});
