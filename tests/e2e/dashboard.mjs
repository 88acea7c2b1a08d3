// Drives walcast's dashboard in the system's headless Chromium with
// playwright-core (never downloads a browser). Run by tests/dashboard_e2e.rs,
// which owns walcast and psql; the two sides talk in JSON lines:
//
//   node → rust (stdout): {"step": "...", ...}
//   rust → node (stdin):  {"go": ..., ...}
//
// Diagnostics go to stderr. Every wait is bounded; any failure prints
// {"step":"failed","error":...}, saves a screenshot and exits non-zero.
//
//   node dashboard.mjs '{"url":"http://127.0.0.1:8080/","screenshot":"/path/dashboard.png"}'

import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const options = JSON.parse(process.argv[2] ?? '{}');
const STEP_TIMEOUT = options.stepTimeoutMs ?? 20000;
const RESTART_TIMEOUT = options.restartTimeoutMs ?? 45000;
const CHROMIUM = options.chromium ?? '/usr/bin/chromium';

const emit = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
const log = (...args) => console.error('[dashboard.mjs]', ...args);

// --- stdin: one JSON command per line ------------------------------------------

const commands = [];
const waiters = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  const waiter = waiters.shift();
  if (waiter) waiter(command);
  else commands.push(command);
});

function nextCommand(timeoutMs) {
  if (commands.length) return Promise.resolve(commands.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no command from the test within ${timeoutMs} ms`)), timeoutMs);
    waiters.push((command) => {
      clearTimeout(timer);
      resolve(command);
    });
  });
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// --- The browser -------------------------------------------------------------------

const profile = mkdtempSync(join(tmpdir(), 'walcast-chromium-'));
const pageErrors = [];
const consoleErrors = [];
// Which part of the test a console message belongs to: the browser logs a
// failed request (the 422 on purpose, the refused connections while walcast
// is down) as an error; anywhere else an error is a bug.
let phase = 'start';

const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  viewport: { width: 1440, height: 900 },
  deviceScaleFactor: 1,
  colorScheme: 'light',
  timeout: STEP_TIMEOUT,
});
// "Live" only after `ready`: before any page script runs, every WebSocket
// the page opens records when its first Socket.IO `ready` packet arrived
// (this listener runs before socket.io-client's), and every change of the
// connection badge to "live" is checked against the newest socket then.
await context.addInitScript(() => {
  window.__sockets = [];
  window.__live = { shown: 0, beforeReady: [] };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      const record = { readyAt: null };
      window.__sockets.push(record);
      this.addEventListener('message', (message) => {
        if (typeof message.data === 'string' && message.data.startsWith('42["ready"')) {
          record.readyAt ??= performance.now();
        }
      });
    }
  };
  document.addEventListener('DOMContentLoaded', () => {
    const badge = document.getElementById('connection');
    new MutationObserver(() => {
      if (badge.dataset.state !== 'live') return;
      window.__live.shown += 1;
      const current = window.__sockets.at(-1);
      if (!current || current.readyAt === null) {
        window.__live.beforeReady.push({ at: performance.now(), sockets: window.__sockets.length });
      }
    }).observe(badge, { attributes: true, attributeFilter: ['data-state'] });
  });
});
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(STEP_TIMEOUT);
page.on('pageerror', (error) => {
  log('page error:', error.message);
  pageErrors.push(error.message);
});
page.on('console', (message) => {
  if (message.type() === 'error') {
    log(`console error (${phase}):`, message.text());
    consoleErrors.push({ phase, text: message.text() });
  }
});
// An alert() would mean event or form data ran as markup.
page.on('dialog', async (dialog) => {
  pageErrors.push(`unexpected ${dialog.type()} dialog: ${dialog.message()}`);
  await dialog.dismiss();
});

// Every Socket.IO `change` the page received, decoded, in order: what the
// gateway sent, whatever the page then did with it.
const changesReceived = [];
const recordPacket = (packet) => {
  if (typeof packet === 'string' && packet.startsWith('42["change",')) {
    changesReceived.push(JSON.parse(packet.slice(2))[1]);
  }
};
page.on('websocket', (socket) => {
  socket.on('framereceived', ({ payload }) => recordPacket(payload));
});
// Before the upgrade to WebSocket, packets come in long-poll responses,
// separated by the record separator.
page.on('response', async (response) => {
  const url = new URL(response.url());
  if (!url.pathname.startsWith('/socket.io/') || url.searchParams.get('transport') !== 'polling') return;
  if (response.request().method() !== 'GET') return;
  const text = await response.text().catch(() => '');
  for (const packet of text.split('\x1e')) recordPacket(packet);
});

const row = (id) => page.locator(`#orders-body tr[data-id="${id}"]`);

/** Polls `condition` (a Node-side check) every 50 ms, up to `timeout`. */
async function waitUntil(what, condition, timeout = STEP_TIMEOUT) {
  const deadline = Date.now() + timeout;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The connection states the page went through since `from` (an index). */
async function statesSince(from) {
  return (await page.evaluate(() => window.__states)).slice(from);
}

/** Whether the event log shows an update of order `id` whose detail mentions `text`. */
async function loggedUpdate(id, text = '') {
  return page.evaluate(
    ({ id, text }) =>
      [...document.querySelectorAll('#log li[data-op="update"]')].some(
        (entry) =>
          entry.querySelector('.log-key').textContent === `id=${id}` &&
          entry.querySelector('.log-detail').textContent.includes(text),
      ),
    { id: String(id), text },
  );
}

/** Waits until the row shows `status` (and `customer`, when given). */
async function waitForRow(id, { status, customer }, timeout = STEP_TIMEOUT) {
  await page.waitForFunction(
    ({ id, status, customer }) => {
      const tr = document.querySelector(`#orders-body tr[data-id="${id}"]`);
      if (!tr) return false;
      const select = tr.querySelector('td[data-col="status"] select');
      const name = tr.querySelector('td[data-col="customer_name"]').textContent;
      return (!status || select.value === status) && (!customer || name === customer);
    },
    { id: String(id), status, customer },
    { timeout, polling: 50 },
  );
}

async function waitForState(states, timeout = STEP_TIMEOUT) {
  await page.waitForFunction(
    (states) => states.includes(document.getElementById('connection').dataset.state),
    states,
    { timeout, polling: 50 },
  );
  return page.locator('#connection').getAttribute('data-state');
}

async function tableIds() {
  return page.locator('#orders-body tr').evaluateAll((rows) => rows.map((tr) => Number(tr.dataset.id)));
}

async function screenshot() {
  if (!options.screenshot) return;
  mkdirSync(dirname(options.screenshot), { recursive: true });
  await page.screenshot({ path: options.screenshot });
}

async function run() {
  const started = Date.now();
  const t = () => Date.now() - started;

  // Load: listing over HTTP, then live over Socket.IO.
  const response = await page.goto(options.url, { waitUntil: 'load' });
  check(response.ok(), `GET ${options.url}: ${response.status()}`);
  await waitForState(['live']);
  await page.waitForSelector('#orders-body tr');
  // Record every connection state the page goes through from here on.
  await page.evaluate(() => {
    const node = document.getElementById('connection');
    window.__states = [node.dataset.state];
    new MutationObserver(() => window.__states.push(node.dataset.state)).observe(node, {
      attributes: true,
      attributeFilter: ['data-state'],
    });
  });
  const loaded = await tableIds();
  emit({ step: 'loaded', ids: loaded, ms: t() });

  // (a) A change typed into psql shows in its row.
  emit({ step: 'ready-for-psql-update' });
  let command = await nextCommand(STEP_TIMEOUT);
  await waitForRow(command.id, { status: command.status });
  await page.waitForSelector(`#log li[data-op="update"]`);
  emit({ step: 'saw-psql-update', ms: t() });

  // (b) An order created with the form arrives through the WAL. The
  // customer's name is markup on purpose: it must show as text.
  const customer = 'Ada <img src=x onerror=alert(1)> Lovelace';
  await page.getByLabel('Customer').fill(customer);
  await page.getByLabel('Product').fill('Analytical Engine');
  await page.locator('#create-form select[name="status"]').selectOption('processing');
  await page.getByRole('button', { name: 'Create order' }).click();
  await page.waitForFunction(() => /Order #\d+ created/.test(document.getElementById('create-message').textContent));
  const message = await page.locator('#create-message').textContent();
  const created = Number(/Order #(\d+)/.exec(message)[1]);
  await waitForRow(created, { status: 'processing', customer });
  check((await page.locator('#orders-body img').count()) === 0, 'event data was rendered as HTML');
  emit({ step: 'created', id: created, customer, ms: t() });

  // Edit the new order's status with its select: the change comes back
  // through the WAL as an update event for that key.
  await row(created).getByLabel(`Status of order ${created}`).selectOption('shipped');
  await page.waitForFunction(
    (id) => [...document.querySelectorAll('#log li[data-op="update"] .log-key')].some((key) => key.textContent === `id=${id}`),
    created,
  );
  await waitForRow(created, { status: 'shipped' });
  emit({ step: 'status-changed', id: created, status: 'shipped', ms: t() });

  // Delete the newest sample order (two clicks) and watch its row go.
  const victim = loaded[0];
  check(victim !== command.id, 'the test updates the oldest order, not the newest');
  await row(victim).getByRole('button', { name: `Delete order ${victim}` }).click();
  await row(victim).getByRole('button', { name: `Confirm: delete order ${victim}` }).click();
  await row(victim).waitFor({ state: 'detached' });
  emit({ step: 'deleted', id: victim, ms: t() });

  // An API error is shown with its message, on the field at fault.
  phase = 'api-error';
  await page.getByLabel('Customer').fill('   ');
  await page.getByLabel('Product').fill('Difference Engine');
  await page.getByRole('button', { name: 'Create order' }).click();
  await page.waitForSelector('#create-message.form-message-error');
  const apiError = await page.locator('#create-message').textContent();
  check(apiError.trim().length > 0, 'empty API error message');
  check((await page.getByLabel('Customer').getAttribute('aria-invalid')) === 'true', 'field not marked invalid');
  // Editing the field clears the error.
  await page.getByLabel('Customer').fill('');
  await page.getByLabel('Product').fill('');
  check((await page.getByLabel('Customer').getAttribute('aria-invalid')) === null, 'error not cleared on input');
  check((await page.locator('#create-message').textContent()) === '', 'error message not cleared on input');
  await page.evaluate(() => document.activeElement?.blur());
  phase = 'writes';
  emit({ step: 'api-error-shown', message: apiError, ms: t() });

  // (c) walcast restarts while the page is open, its gateway's history on
  // disk (fanout.replay_dir); a change made while it was down shows after
  // the page reconnects with `since`: replayed as an event, so it is in the
  // event log, and with no resync and no reload.
  phase = 'restart';
  let statesFrom = (await page.evaluate(() => window.__states)).length;
  emit({ step: 'ready-for-restart' });
  command = await nextCommand(RESTART_TIMEOUT);
  check(command.go === 'down', `expected {"go":"down"}, got ${JSON.stringify(command)}`);
  const downState = await waitForState(['offline', 'resyncing', 'connecting']);
  emit({ step: 'saw-disconnect', state: downState, ms: t() });
  command = await nextCommand(RESTART_TIMEOUT);
  await waitForRow(command.id, { status: command.status, customer: command.customer }, RESTART_TIMEOUT);
  await waitForState(['live'], RESTART_TIMEOUT);
  await page.waitForFunction(
    ({ id, text }) =>
      [...document.querySelectorAll('#log li[data-op="update"]')].some(
        (entry) =>
          entry.querySelector('.log-key').textContent === `id=${id}` &&
          entry.querySelector('.log-detail').textContent.includes(text),
      ),
    { id: String(command.id), text: command.customer },
    { timeout: STEP_TIMEOUT, polling: 50 },
  );
  let states = await statesSince(statesFrom);
  check(!states.includes('resyncing'), `the page resynced instead of replaying with since: ${states}`);
  phase = 'after-restart';
  emit({ step: 'saw-change-after-restart', states, awayLogged: await loggedUpdate(command.id, command.customer), ms: t() });

  // (d) walcast restarts again, now without its history: the page's cursor
  // means nothing to the new gateway, which sends `resync`. The page reloads
  // the listing (held here until a change has arrived meanwhile), queues
  // that change, then applies it through the listing's snapshot; the event
  // log shows it.
  phase = 'restart';
  statesFrom = (await page.evaluate(() => window.__states)).length;
  emit({ step: 'ready-for-resync-restart' });
  command = await nextCommand(RESTART_TIMEOUT);
  check(command.go === 'down', `expected {"go":"down"}, got ${JSON.stringify(command)}`);
  const heldListings = [];
  let holding = true;
  const isListing = (url) => new URL(url).pathname === '/orders';
  await page.route(isListing, (route) => {
    if (holding && route.request().method() === 'GET') heldListings.push(route);
    else route.continue();
  });
  await waitForState(['offline', 'connecting']);
  emit({ step: 'saw-disconnect-again', ms: t() });
  await waitForState(['resyncing'], RESTART_TIMEOUT);
  await waitUntil('the resync reload to ask for the listing', () => heldListings.length > 0, RESTART_TIMEOUT);
  const receivedBefore = changesReceived.length;
  emit({ step: 'listing-held', ms: t() });
  command = await nextCommand(STEP_TIMEOUT);
  await waitUntil(`the change of order ${command.id} to arrive`, () =>
    changesReceived.slice(receivedBefore).some((event) => String(event.key?.id) === String(command.id)),
  );
  const queuedEvent = changesReceived.slice(receivedBefore).find((event) => String(event.key?.id) === String(command.id));
  const loggedEarly = await page.locator(`#log li[data-id="${queuedEvent.id}"]`).count();
  check(loggedEarly === 0, 'the change was applied before the listing arrived: it was not queued');
  holding = false;
  for (const route of heldListings) await route.continue();
  await page.unroute(isListing);
  await waitForState(['live'], STEP_TIMEOUT);
  await waitForRow(command.id, { status: command.status });
  await page.waitForSelector(`#log li[data-id="${queuedEvent.id}"]`, { timeout: STEP_TIMEOUT });
  states = await statesSince(statesFrom);
  check(states.includes('resyncing'), `the page did not resync: ${states}`);
  phase = 'after-resync';
  emit({ step: 'saw-queued-change-logged', id: queuedEvent.id, states, ms: t() });

  // The pipeline panel: while the test runs a load with psql, its
  // changes/s shows a rate above zero and its sparkline draws it.
  emit({ step: 'ready-for-load' });
  command = await nextCommand(STEP_TIMEOUT);
  check(command.go === 'load', `expected {"go":"load"}, got ${JSON.stringify(command)}`);
  const sparkBefore = await page.locator('#metric-changes path.spark-1').getAttribute('d');
  await page.waitForFunction(() => Number(document.getElementById('metric-changes').dataset.rate) > 0, null, {
    timeout: STEP_TIMEOUT,
    polling: 100,
  });
  const rate = Number(await page.locator('#metric-changes').getAttribute('data-rate'));
  const sparkDuring = await page.locator('#metric-changes path.spark-1').getAttribute('d');
  check(sparkDuring && sparkDuring !== sparkBefore, 'the changes/s sparkline did not move');
  const components = await page.locator('#components li').evaluateAll((items) =>
    items.map((item) => ({ name: item.dataset.component, state: item.querySelector('.component-state').textContent })),
  );
  const lag = await page.locator('#metric-lag [data-value]').textContent();
  emit({ step: 'saw-load', rate, components, lag, ms: t() });
  command = await nextCommand(STEP_TIMEOUT);
  check(command.go === 'load-done', `expected {"go":"load-done"}, got ${JSON.stringify(command)}`);
  await waitForState(['live']);

  // Still live after the restart: one more psql change arrives.
  emit({ step: 'ready-for-live-check' });
  command = await nextCommand(STEP_TIMEOUT);
  await waitForRow(command.id, { status: command.status });
  // The screenshot shows the highlight of that last change (it lasts
  // 2.4 s), after the event log's entry has slid in.
  await page.waitForSelector(`#orders-body tr[data-id="${command.id}"] td[data-flash]`, { timeout: 2000 });
  await page.waitForTimeout(300);
  await screenshot();
  emit({
    step: 'done',
    ids: await tableIds(),
    state: await page.locator('#connection').getAttribute('data-state'),
    logEntries: await page.locator('#log li').count(),
    states: await page.evaluate(() => window.__states),
    live: await page.evaluate(() => window.__live),
    sockets: await page.evaluate(() => window.__sockets.length),
    pageErrors,
    consoleErrors,
    ms: t(),
  });
}

/**
 * With auth on: the page lists orders (reads are open) but the live
 * connection and writes need a token; once one is saved, both work, and
 * the token outlives a reload (localStorage).
 */
async function runAuth() {
  const started = Date.now();
  const t = () => Date.now() - started;
  await page.goto(options.url, { waitUntil: 'load' });
  await waitForState(['unauthorized']);
  await page.waitForSelector('#orders-body tr');
  check(await page.locator('#token-panel').evaluate((details) => details.open), 'token panel not opened');
  emit({ step: 'asked-for-token', ms: t() });

  // A write without a token: the API's 401 message shows.
  phase = 'api-error';
  await page.getByLabel('Customer').fill('Grace');
  await page.getByLabel('Product').fill('COBOL compiler');
  await page.getByRole('button', { name: 'Create order' }).click();
  await page.waitForSelector('#create-message.form-message-error');
  const unauthorized = await page.locator('#create-message').textContent();
  phase = 'writes';

  await page.getByLabel(/Bearer token/).fill(options.token);
  await page.getByRole('button', { name: 'Save' }).click();
  await waitForState(['live']);
  await page.getByRole('button', { name: 'Create order' }).click();
  await page.waitForFunction(() => /Order #\d+ created/.test(document.getElementById('create-message').textContent));
  const created = Number(/Order #(\d+)/.exec(await page.locator('#create-message').textContent())[1]);
  await waitForRow(created, { customer: 'Grace', status: 'pending' });
  emit({ step: 'created-with-token', id: created, unauthorized, ms: t() });

  await page.reload({ waitUntil: 'load' });
  await waitForState(['live']);
  await page.waitForSelector(`#orders-body tr[data-id="${created}"]`);
  await screenshot();
  emit({
    step: 'done',
    ids: await tableIds(),
    live: await page.evaluate(() => window.__live),
    pageErrors,
    consoleErrors,
    ms: t(),
  });
}

let exitCode = 0;
try {
  await (options.mode === 'auth' ? runAuth() : run());
} catch (error) {
  exitCode = 1;
  log(error.stack ?? String(error));
  emit({ step: 'failed', error: String(error.message ?? error), pageErrors, consoleErrors });
  try {
    await screenshot();
  } catch {
    // the page may be gone
  }
} finally {
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
// process.exit drops what a piped stdout has not written yet.
process.stdout.write('', () => process.exit(exitCode));
