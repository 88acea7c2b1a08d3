// walcast dashboard: a live table of public.orders, a log of change events
// and a pipeline panel, with create / edit status / delete through the
// HTTP API.
//
// The rows come from walcast-client (clients/js, served here as
// /dashboard/walcast-client.js): it loads the listing, hands off to the
// change stream with the listing's snapshot, applies each change once,
// reconnects with `since` and reloads on `resync`. This file only renders
// what it reports: the rows, each change, every event received, and its
// status ("Live" only after the gateway's `ready`). The pipeline panel is
// pipeline.js.
//
// Event data is only ever written with textContent, never as HTML.

import walcast from './walcast-client.js';
import { startPipeline } from './pipeline.js';

/** The statuses the table's CHECK constraint allows, in lifecycle order. */
const STATUSES = ['pending', 'processing', 'shipped', 'delivered', 'cancelled'];
const TOKEN_KEY = 'walcast.token';
const LOG_LIMIT = 200;
const REQUEST_TIMEOUT_MS = 15000;
const FLASH_MS = 2400;

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $('connection'),
  connectionText: $('connection-text'),
  notices: $('notices'),
  tokenPanel: $('token-panel'),
  tokenForm: $('token-form'),
  tokenInput: $('token-input'),
  tokenClear: $('token-clear'),
  createForm: $('create-form'),
  createSubmit: $('create-submit'),
  createMessage: $('create-message'),
  createStatus: $('status'),
  ordersBody: $('orders-body'),
  ordersEmpty: $('orders-empty'),
  ordersCount: $('orders-count'),
  log: $('log'),
  logEmpty: $('log-empty'),
  logCount: $('log-count'),
};

// --- Small helpers ---------------------------------------------------------

function make(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === 'text') node.textContent = value;
    else if (name === 'className') node.className = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

/** A `timestamp` value (UTC, no offset) as "2026-11-22 05:04:10". */
function formatTimestamp(value) {
  if (typeof value !== 'string') return value == null ? '' : String(value);
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(value);
  return match ? `${match[1]} ${match[2]}` : value;
}

/** An RFC 3339 commit time as local wall-clock time. */
function formatClock(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value ?? '');
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** A JSON value, shortened, for the event log. */
function brief(value, limit = 40) {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

function notify(message, kind = 'error') {
  const notice = make('div', { className: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, [
    make('span', { text: message }),
  ]);
  const close = make('button', { type: 'button', className: 'notice-close', 'aria-label': 'Dismiss', text: '×' });
  close.addEventListener('click', () => notice.remove());
  notice.append(close);
  ui.notices.append(notice);
  while (ui.notices.children.length > 4) ui.notices.firstElementChild.remove();
  setTimeout(() => notice.remove(), kind === 'error' ? 10000 : 5000);
}

/**
 * Highlights a changed row or cell for a moment. Alternating between two
 * identical animations restarts it without forcing a layout, which would
 * make a burst of hundreds of changes crawl.
 */
function flash(node) {
  node.dataset.flash = node.dataset.flash === 'a' ? 'b' : 'a';
  clearTimeout(node.flashTimer);
  node.flashTimer = setTimeout(() => delete node.dataset.flash, FLASH_MS);
}

// --- Token -----------------------------------------------------------------

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

function storeToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    notify('This browser does not allow storing the token; it lasts until the page is closed.');
  }
  sessionToken = token;
  ui.tokenPanel.dataset.set = String(Boolean(token));
}

let sessionToken = storedToken();

// --- HTTP API --------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, detail) {
    super(detail?.message || (status ? `request failed (HTTP ${status})` : 'walcast is unreachable'));
    this.status = status;
    this.code = detail?.code;
    this.field = detail?.field;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (sessionToken) headers.Authorization = `Bearer ${sessionToken}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      cache: 'no-store',
    });
  } catch {
    throw new ApiFailure(0);
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // a proxy's HTML error page, say: keep the status
  }
  if (!response.ok) {
    const failure = new ApiFailure(response.status, data?.error);
    if (failure.status === 401) {
      failure.message += ' (set an access token, top right)';
      ui.tokenPanel.open = true;
    }
    throw failure;
  }
  return data;
}

// --- Connection state ------------------------------------------------------

const STATE_TEXT = {
  connecting: 'Connecting…',
  'catching-up': 'Catching up…',
  live: 'Live',
  resyncing: 'Resyncing…',
  offline: 'Offline, reconnecting…',
  unauthorized: 'Token required',
  error: 'Connection refused',
};

function setState(state, detail = '') {
  ui.connection.dataset.state = state;
  ui.connectionText.textContent = STATE_TEXT[state] ?? state;
  ui.connection.title = detail;
}

// --- The orders table ------------------------------------------------------

const rowNodes = new Map(); // order id (string) -> <tr>

function statusSelect(order) {
  const select = make('select', { 'aria-label': `Status of order ${order.id}` });
  for (const status of STATUSES) select.append(make('option', { value: status, text: status }));
  if (!STATUSES.includes(order.status)) {
    select.append(make('option', { value: order.status, text: order.status }));
  }
  select.value = order.status;
  select.addEventListener('change', () => changeStatus(select.closest('tr').dataset.id, select));
  return select;
}

function buildRow(order) {
  const statusCell = make('td', { dataset: { col: 'status' }, className: `status status-${order.status}` }, [
    statusSelect(order),
  ]);
  const remove = make('button', {
    type: 'button',
    className: 'button button-quiet button-danger',
    'aria-label': `Delete order ${order.id}`,
    text: 'Delete',
  });
  remove.addEventListener('click', () => deleteOrder(remove.closest('tr').dataset.id, remove));
  const updated = make('td', { dataset: { col: 'updated_at' }, className: 'col-time' });
  const row = make('tr', { dataset: { id: String(order.id) } }, [
    make('td', { dataset: { col: 'id' }, className: 'col-id', text: String(order.id) }),
    make('td', { dataset: { col: 'customer_name' } }),
    make('td', { dataset: { col: 'product_name' } }),
    statusCell,
    updated,
    make('td', { className: 'col-actions' }, [remove]),
  ]);
  fillRow(row, order);
  return row;
}

function fillRow(row, order) {
  const cell = (column) => row.querySelector(`td[data-col="${column}"]`);
  cell('customer_name').textContent = order.customer_name ?? '';
  cell('product_name').textContent = order.product_name ?? '';
  const updated = cell('updated_at');
  updated.textContent = formatTimestamp(order.updated_at);
  updated.title = `created ${formatTimestamp(order.created_at)}`;
  const status = cell('status');
  status.className = `status status-${order.status}`;
  const select = status.querySelector('select');
  if (![...select.options].some((option) => option.value === order.status)) {
    select.append(make('option', { value: order.status, text: order.status }));
  }
  if (!select.disabled) select.value = order.status;
}

/**
 * Rebuilds the table from `orders`. With `previous` (the orders shown
 * before a reload, by id), rows and cells that differ are highlighted like
 * the changes of live events.
 */
function renderAll(orders, previous = null) {
  rowNodes.clear();
  const rows = orders.map((order) => {
    const row = buildRow(order);
    const id = String(order.id);
    rowNodes.set(id, row);
    const before = previous?.get(id);
    if (previous && !before) flash(row);
    if (before) {
      for (const cell of row.querySelectorAll('td[data-col]')) {
        const column = cell.dataset.col;
        if (JSON.stringify(before[column]) !== JSON.stringify(order[column])) flash(cell);
      }
    }
    return row;
  });
  ui.ordersBody.replaceChildren(...rows);
  renderCount();
}

function renderCount() {
  const n = feed.size;
  ui.ordersCount.textContent = `${n} ${n === 1 ? 'order' : 'orders'}`;
  ui.ordersEmpty.hidden = n !== 0;
}

/** Puts a new row where the newest-first order wants it. */
function insertRow(row, id) {
  const numeric = BigInt(id);
  for (const existing of ui.ordersBody.children) {
    if (BigInt(existing.dataset.id) < numeric) {
      ui.ordersBody.insertBefore(row, existing);
      return;
    }
  }
  ui.ordersBody.append(row);
}

/** Shows one change the feed applied ({op, key, old, new, changed}). */
function showApplied(change) {
  if (change.op === 'truncate') {
    rowNodes.clear();
    ui.ordersBody.replaceChildren();
    renderCount();
    return;
  }
  const id = String(change.key.id);
  const row = rowNodes.get(id);
  if (change.new === null) {
    row?.remove();
    rowNodes.delete(id);
  } else if (!row) {
    const created = buildRow(change.new);
    rowNodes.set(id, created);
    insertRow(created, id);
    flash(created);
  } else {
    fillRow(row, change.new);
    for (const column of change.changed) {
      const cell = row.querySelector(`td[data-col="${column}"]`);
      if (cell) flash(cell);
    }
  }
  renderCount();
}

// --- The event log ---------------------------------------------------------

const logged = new Set(); // ids of the events in the log
let received = 0;

function describeKey(key) {
  if (!key || typeof key !== 'object') return '';
  return Object.entries(key)
    .map(([column, value]) => `${column}=${brief(value, 24)}`)
    .join(', ');
}

function describeChange(event) {
  switch (event.op) {
    case 'insert':
      return 'new row';
    case 'read':
      return 'existing row (backfill)';
    case 'delete':
      return 'row deleted';
    case 'truncate':
      return 'table truncated';
    case 'update': {
      const columns = Array.isArray(event.changed) ? event.changed : null;
      if (!columns) return 'row updated';
      if (columns.length === 0) return 'no column changed';
      return columns
        .map((column) =>
          event.old && event.new && column !== 'updated_at'
            ? `${column}: ${brief(event.old[column], 20)} → ${brief(event.new[column], 20)}`
            : column,
        )
        .join(', ');
    }
    default:
      return '';
  }
}

function logEvent(event) {
  received += 1;
  ui.logCount.textContent = `${received} received`;
  if (logged.has(event.id)) return;
  logged.add(event.id);
  const op = String(event.op ?? '?');
  const entry = make('li', { className: 'log-entry', dataset: { id: String(event.id), op } }, [
    make('div', { className: 'log-line' }, [
      make('span', { className: `op op-${op}`, text: op }),
      make('span', { className: 'log-table', text: `${event.schema}.${event.table}` }),
      make('span', { className: 'log-key', text: describeKey(event.key) }),
      make('time', { className: 'log-time', datetime: String(event.commit_time ?? ''), text: formatClock(event.commit_time) }),
    ]),
    make('div', { className: 'log-detail', text: describeChange(event), title: String(event.id) }),
  ]);
  ui.log.prepend(entry);
  while (ui.log.children.length > LOG_LIMIT) {
    logged.delete(ui.log.lastElementChild.dataset.id);
    ui.log.lastElementChild.remove();
  }
  ui.logEmpty.hidden = true;
}

// --- The change stream ------------------------------------------------------

const feed = walcast.orders({ token: () => sessionToken });
// The orders on screen, by id (null before the first listing): after a
// reload, the rows and cells that differ from them are highlighted.
let shown = null;

feed.on('status', (status) => setState(status));
feed.on('load', (orders) => {
  renderAll([...orders].reverse(), shown);
  shown = new Map(orders.map((order) => [String(order.id), order]));
});
feed.on('change', (change) => {
  showApplied(change);
  if (change.op === 'truncate') shown?.clear();
  else if (change.new === null) shown?.delete(String(change.key.id));
  else shown?.set(String(change.key.id), change.new);
});
feed.on('event', logEvent);
feed.on('resync', (payload) => setState('resyncing', `resync: ${payload.reason ?? 'unknown reason'}`));
let lastError = '';
feed.on('error', (error) => {
  if (error.kind === 'unauthorized') {
    setState('unauthorized', error.message);
    ui.tokenPanel.open = true;
    notify(`Live updates need a valid token: ${error.message}`);
    return;
  }
  if (error.kind === 'refused') setState('error', error.message);
  // One notice per distinct problem, not one per retry.
  if (error.message !== lastError) notify(error.kind === 'subscribe' ? error.message : `Cannot load orders: ${error.message}`);
  lastError = error.message;
});
feed.on('ready', () => {
  lastError = '';
});

// --- Writes ----------------------------------------------------------------

/** Marks the form field an API error names, if it is one of the form's. */
function markInvalid(field) {
  const input = field ? ui.createForm.elements.namedItem(field) : null;
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', 'create-message');
    input.focus();
  }
}

ui.createForm.addEventListener('input', (input) => {
  if (input.target.getAttribute('aria-invalid') === 'true') {
    input.target.removeAttribute('aria-invalid');
    ui.createMessage.className = 'form-message';
    ui.createMessage.textContent = '';
  }
});

ui.createForm.addEventListener('submit', async (submit) => {
  submit.preventDefault();
  const form = ui.createForm.elements;
  for (const name of ['customer_name', 'product_name', 'status']) form[name].removeAttribute('aria-invalid');
  ui.createMessage.className = 'form-message';
  ui.createMessage.textContent = '';
  ui.createSubmit.disabled = true;
  try {
    const order = await api('POST', '/orders', {
      customer_name: form.customer_name.value,
      product_name: form.product_name.value,
      status: form.status.value,
    });
    ui.createForm.reset();
    ui.createMessage.classList.add('form-message-ok');
    ui.createMessage.textContent = `Order #${order.id} created; it shows up when its change arrives from the WAL.`;
    form.customer_name.focus();
  } catch (error) {
    ui.createMessage.classList.add('form-message-error');
    ui.createMessage.textContent = error.message;
    markInvalid(error.field);
  } finally {
    ui.createSubmit.disabled = false;
  }
});

async function changeStatus(id, select) {
  const wanted = select.value;
  select.disabled = true;
  try {
    await api('PATCH', `/orders/${encodeURIComponent(id)}`, { status: wanted });
  } catch (error) {
    notify(`Order ${id}: ${error.message}`);
    const current = feed.get(Number(id));
    if (current) select.value = current.status;
  } finally {
    select.disabled = false;
    // The table shows what the WAL says; an event may have come meanwhile.
    const current = feed.get(Number(id));
    if (current && current.status !== wanted) select.value = current.status;
  }
}

async function deleteOrder(id, button) {
  if (!button.classList.contains('armed')) {
    // Two clicks, no modal dialog: the first one arms the button.
    button.classList.add('armed');
    button.textContent = 'Confirm';
    button.setAttribute('aria-label', `Confirm: delete order ${id}`);
    button.disarm = setTimeout(() => disarm(button, id), 4000);
    return;
  }
  clearTimeout(button.disarm);
  button.disabled = true;
  try {
    await api('DELETE', `/orders/${encodeURIComponent(id)}`);
    // The row goes when the delete event arrives.
  } catch (error) {
    notify(`Order ${id}: ${error.message}`);
    button.disabled = false;
    disarm(button, id);
  }
}

function disarm(button, id) {
  button.classList.remove('armed');
  button.textContent = 'Delete';
  button.setAttribute('aria-label', `Delete order ${id}`);
}

// --- Token panel -----------------------------------------------------------

function reconnectWithToken() {
  feed.reconnect();
}

ui.tokenInput.value = sessionToken;
ui.tokenPanel.dataset.set = String(Boolean(sessionToken));
ui.tokenForm.addEventListener('submit', (submit) => {
  submit.preventDefault();
  storeToken(ui.tokenInput.value.trim());
  ui.tokenPanel.open = false;
  notify(sessionToken ? 'Token saved.' : 'Token cleared.', 'info');
  reconnectWithToken();
});
ui.tokenClear.addEventListener('click', () => {
  ui.tokenInput.value = '';
  storeToken('');
  notify('Token cleared.', 'info');
  reconnectWithToken();
});

// --- Start -----------------------------------------------------------------

for (const status of STATUSES) ui.createStatus.append(make('option', { value: status, text: status }));
setState('connecting');
startPipeline({
  feed,
  request: (path) => fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) }),
});
