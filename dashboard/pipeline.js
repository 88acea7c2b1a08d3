// The dashboard's pipeline panel: live sparklines over the last minutes of
//
// - changes per second (the gateway's `walcast_fanout_delivered_total`,
//   else the capture's `walcast_publisher_published_total`, from /metrics);
// - commit → browser lag, p50 and p99 over the last 5 s, measured here:
//   the time from each change's `commit_time` to its arrival in this page
//   (so it includes the clock difference between the database and this
//   browser);
// - the slot's retained WAL (`walcast_slot_retained_wal_bytes`);
// - connected sockets (`walcast_fanout_connected_sockets`);
//
// and each /readyz component's state. One sample a second; the sparklines
// are hand-drawn SVG paths. A metric this process does not expose (a role
// it does not play) shows "–".

const SAMPLE_MS = 1000;
const WINDOW = 300; // samples: five minutes
/** The lag quantiles of a sample are over the changes of the last 5 s. */
const LAG_WINDOW_MS = 5000;

/**
 * Prometheus text (0.0.4 or OpenMetrics) to a Map of metric name → sum of
 * its samples over all label sets.
 */
export function parseMetrics(text) {
  const sums = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const value = Number(match[3]);
    if (!Number.isFinite(value)) continue;
    sums.set(match[1], (sums.get(match[1]) ?? 0) + value);
  }
  return sums;
}

/** The value at quantile `q` of `values` (sorted ascending), or null. */
export function quantile(values, q) {
  if (values.length === 0) return null;
  const index = Math.min(values.length - 1, Math.max(0, Math.ceil(q * values.length) - 1));
  return values[index];
}

/** An SVG path through `series` (nulls leave gaps), scaled to 300 × 34. */
export function sparkPath(series, max, area = false) {
  const top = max > 0 ? max : 1;
  const step = 300 / (WINDOW - 1);
  const offset = WINDOW - series.length;
  let d = '';
  let run = [];
  const flush = () => {
    if (run.length === 0) return;
    const line = run.map(([x, y], i) => `${i ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`).join('');
    d += area ? `${line}L${run.at(-1)[0].toFixed(1)},34L${run[0][0].toFixed(1)},34Z` : line;
    run = [];
  };
  series.forEach((value, i) => {
    if (value === null || value === undefined) {
      flush();
      return;
    }
    run.push([(offset + i) * step, 33 - (Math.min(value, top) / top) * 31]);
  });
  flush();
  return d;
}

function formatBytes(bytes) {
  if (bytes === null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function formatMs(ms) {
  if (ms === null) return '–';
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

function formatRate(rate) {
  if (rate === null) return '–';
  return rate >= 100 ? String(Math.round(rate)) : rate.toFixed(1);
}

/**
 * Starts the panel. `feed` is the page's walcast-client feed (its `event`s
 * give the lag); `request` fetches a path and answers the Response.
 */
export function startPipeline({ feed, request }) {
  const $ = (id) => document.getElementById(id);
  const tiles = {
    changes: $('metric-changes'),
    lag: $('metric-lag'),
    wal: $('metric-wal'),
    sockets: $('metric-sockets'),
  };
  const components = $('components');
  const series = { changes: [], p50: [], p99: [], wal: [], sockets: [] };
  let lags = []; // [arrived at, lag in ms] of the last LAG_WINDOW_MS
  let previous = null; // { count, at }

  feed.on('event', (event) => {
    const committed = Date.parse(event.commit_time);
    if (Number.isFinite(committed)) lags.push([Date.now(), Math.max(0, Date.now() - committed)]);
  });

  const push = (name, value) => {
    series[name].push(value);
    if (series[name].length > WINDOW) series[name].shift();
  };

  function show(tile, text, { area = null, lines }) {
    tile.querySelector('[data-value]').textContent = text;
    tile.querySelector('.spark-area')?.setAttribute('d', area ?? '');
    lines.forEach((d, i) => tile.querySelector(`.spark-${i + 1}`).setAttribute('d', d));
  }

  /** A tile with one filled line over `values`. */
  function showOne(tile, text, values) {
    const max = peak(values);
    show(tile, text, { area: sparkPath(values, max, true), lines: [sparkPath(values, max)] });
  }

  const peak = (values) => Math.max(0, ...values.filter((v) => v !== null));
  const last = (values) => values.at(-1) ?? null;

  function draw() {
    showOne(tiles.changes, formatRate(last(series.changes)), series.changes);
    tiles.changes.dataset.rate = String(last(series.changes) ?? '');
    const lagMax = peak(series.p99);
    show(tiles.lag, `${formatMs(last(series.p50))} / ${formatMs(last(series.p99))}`, {
      lines: [sparkPath(series.p50, lagMax), sparkPath(series.p99, lagMax)],
    });
    showOne(tiles.wal, formatBytes(last(series.wal)), series.wal);
    const sockets = last(series.sockets);
    showOne(tiles.sockets, sockets === null ? '–' : String(sockets), series.sockets);
  }

  function showComponents(list) {
    const items = list.map((component) => {
      const item = document.createElement('li');
      item.dataset.component = component.name;
      item.dataset.healthy = String(Boolean(component.healthy));
      const name = document.createElement('span');
      name.textContent = component.name;
      const state = document.createElement('span');
      state.className = 'component-state';
      state.textContent = component.state;
      item.append(name, state);
      return item;
    });
    components.replaceChildren(...items);
  }

  async function sample() {
    const now = performance.now();
    const since = Date.now() - LAG_WINDOW_MS;
    lags = lags.filter(([at]) => at >= since);
    const sorted = lags.map(([, lag]) => lag).sort((a, b) => a - b);
    push('p50', quantile(sorted, 0.5));
    push('p99', quantile(sorted, 0.99));
    let metrics = null;
    try {
      const response = await request('/metrics');
      if (response.ok) metrics = parseMetrics(await response.text());
    } catch {
      // walcast is down: a gap in every line
    }
    const count = metrics?.get('walcast_fanout_delivered_total') ?? metrics?.get('walcast_publisher_published_total');
    let rate = null;
    if (count !== undefined && count !== null) {
      if (previous && count >= previous.count) rate = ((count - previous.count) * 1000) / (now - previous.at);
      previous = { count, at: now };
    } else {
      previous = null;
    }
    push('changes', rate);
    push('wal', metrics?.get('walcast_slot_retained_wal_bytes') ?? null);
    push('sockets', metrics?.get('walcast_fanout_connected_sockets') ?? null);
    draw();
    try {
      const response = await request('/readyz');
      const body = await response.json();
      showComponents(Array.isArray(body.components) ? body.components : []);
    } catch {
      showComponents([{ name: 'walcast', healthy: false, state: 'unreachable' }]);
    }
  }

  sample();
  setInterval(sample, SAMPLE_MS);
}
