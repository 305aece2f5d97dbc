// The safe-resume inspector page: every actor's machine, live, from the launcher's event stream.
/* global ELK */
'use strict';

// The control token is in this page's fragment (#token=...), as `safe-resume up` printed the address
// (a browser sends a fragment to no server): it goes on every /api call and on the event stream. Once
// read it is kept for this tab only (sessionStorage, so a reload still has it) and taken out of the
// address bar and the history, where a shared screen or a later look at the history would show it.
const TOKEN_KEY = 'safe-resume-token';
const fromAddress = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromAddress !== null) {
  try {
    sessionStorage.setItem(TOKEN_KEY, fromAddress);
  } catch {
    // storage refused (a private window may): the token lives as long as this page
  }
  history.replaceState(null, '', location.pathname + location.search);
}
const kept = () => {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
};
const token = fromAddress ?? kept() ?? '';
const authorization = `Bearer ${token}`;
// Set once the launcher refused the token: say so instead of "reconnecting".
let refused = token ? '' : 'no token: open the address safe-resume up printed';
window.addEventListener('hashchange', () => location.reload());

const actors = new Map(); // sessionId -> { id, process, machine, def, value, context, status, prev, lastEvent, born }
let selected = null;
// The message list: protocol messages between nodes and replicas, and the machines' own (internal)
// events, kept apart so neither pushes the other out; `view` says which the list shows.
const rows = { protocol: [], internal: [] };
let view = 'protocol';
// From the status: each replica's and node's process (state, when it started, when it exited), and the
// invalidation reason of every handle a node reported, by node and requestId.
const procs = new Map();
const reasons = new Map();
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

function parse(x) {
  if (typeof x !== 'string') return x;
  try {
    return JSON.parse(x);
  } catch {
    return undefined;
  }
}

function flat(value) {
  if (typeof value === 'string') return value;
  if (!value || typeof value !== 'object') return String(value);
  return Object.entries(value)
    .map(([k, v]) => (typeof v === 'string' ? `${k}.${v}` : `${k}(${flat(v)})`))
    .join(' ');
}

function color(a) {
  const v = flat(a.value);
  if (['active', 'paused', 'resuming', 'invalidated'].includes(v)) return v;
  if (a.machine === 'session')
    return v.startsWith('connected')
      ? v.includes('unavailable')
        ? 'paused'
        : 'active'
      : v === 'stopped'
        ? 'invalidated'
        : 'paused';
  return 'other';
}

// Why a handle was invalidated: from its machine's context, or from the status of its node.
function reasonOf(a) {
  const c = a.context || {};
  return c.reason || reasons.get(`${a.process}\u0000${c.requestId}`) || '';
}

function stateText(a) {
  const v = flat(a.value);
  const why = v === 'invalidated' ? reasonOf(a) : '';
  return why ? `${v}: ${why}` : v;
}

// Whether an actor's process is running ('live'), down ('dead': the actor is as that process left it),
// or was followed by a newer process of the same name ('gone': its actors replace this one).
function life(a) {
  const p = procs.get(a.process);
  if (!p) return 'live';
  if (p.startedAt && a.born < p.startedAt) return 'gone';
  // Born after the exit the status last reported: a new process, not yet in the status.
  if (p.state === 'down' && !(p.exitedAt && a.born > p.exitedAt)) return 'dead';
  return 'live';
}

function label(a) {
  const c = a.context || {};
  if (a.machine === 'handle') return `${c.target} (app handle)`;
  if (a.machine === 'session') return 'session';
  if (a.machine === 'replicaHandle') return `${c.target} ${String(c.requestId || '').slice(0, 6)}`;
  return a.machine;
}

// Actor ids (x:0, x:1, ...) are numbered per process.
const key = (ev, id) => `${ev.process}:${id}`;

// A row of the message list, kept in time order (processes send in batches, so not quite in order).
function addRow(kind, row) {
  row.kind = kind;
  if (!Number.isFinite(row.t)) row.t = Date.now();
  const list = rows[kind];
  let i = list.length;
  while (i > 0 && list[i - 1].t > row.t) i--;
  list.splice(i, 0, row);
  if (list.length > 1000) list.splice(0, list.length - 1000);
}

// An event of an earlier actor under the same id (a process restarted; the launcher replays both).
const stale = (a, ev) => Number(ev.createdAt) < a.born;

function onEvent(ev) {
  if (ev.type === '@safe-resume.message') {
    // Seen by a node agent (or the launcher's own, `cli`): sent to the replica `peer`, or received from it.
    const m = ev.message || {};
    const out = ev.direction === 'out';
    addRow('protocol', {
      t: Number(ev.createdAt),
      from: out ? ev.process : ev.peer,
      to: out ? ev.peer : ev.process,
      type: m.type,
      requestId: m.requestId || '',
      target: m.target || '',
      detail: m.detail || '',
    });
  } else if (ev.type === '@xstate.actor') {
    const def = parse(ev.definition);
    const snap = parse(ev.snapshot) || {};
    if (!def || !def.states) return; // invoked promise actors and the like
    actors.set(key(ev, ev.sessionId), {
      id: key(ev, ev.sessionId),
      process: ev.process,
      machine: def && def.id,
      def,
      value: snap.value,
      context: snap.context,
      status: snap.status || 'active',
      prev: undefined,
      lastEvent: undefined,
      born: Number(ev.createdAt) || 0,
    });
  } else if (ev.type === '@xstate.snapshot') {
    const a = actors.get(key(ev, ev.sessionId));
    const snap = parse(ev.snapshot) || {};
    if (!a || stale(a, ev)) return;
    const before = flat(a.value);
    a.prev = a.value;
    a.value = snap.value;
    if (flat(a.value) !== before) a.seen = [...(a.seen || []), flat(a.value)].slice(-12);
    a.context = snap.context || a.context;
    a.status = snap.status || a.status;
    const e = parse(ev.event);
    a.lastEvent = e && e.type;
  } else if (ev.type === '@xstate.event') {
    const to = actors.get(key(ev, ev.sessionId));
    const from = ev.sourceId && actors.get(key(ev, ev.sourceId));
    const e = parse(ev.event) || {};
    if (!to || stale(to, ev) || String(e.type).startsWith('xstate.')) return;
    const c = to.context || {};
    addRow('internal', {
      t: Number(ev.createdAt),
      from: from ? `${from.process}/${label(from)}` : `${to.process}`,
      to: `${to.process}/${label(to)}`,
      type: e.type,
      requestId: c.requestId || '',
      target: c.target || '',
      detail: e.reason || e.code || '',
    });
  }
  dirty = true;
}

let dirty = true;
function render() {
  if (!dirty) return;
  dirty = false;
  const byProc = new Map();
  for (const a of actors.values()) {
    if (a.status !== 'active' && !(a.machine === 'handle' && flat(a.value) === 'invalidated')) continue;
    const l = life(a);
    if (l === 'gone') continue;
    if (!byProc.has(a.process)) byProc.set(a.process, []);
    byProc.get(a.process).push({ a, dead: l === 'dead' });
  }
  const names = [...byProc.keys()].sort();
  // An actor whose process is down is drawn as that process left it, greyed out and labelled.
  const down = ' <span class="down">process down</span>';
  $('actors').innerHTML = names
    .map((p) => {
      const allDead = byProc.get(p).every((x) => x.dead);
      return (
        `<div class="proc${allDead ? ' dead' : ''}" data-process="${esc(p)}">${esc(p)}${allDead ? down : ''}</div>` +
        byProc
          .get(p)
          .map(
            ({ a, dead }) =>
              `<div class="actor${dead ? ' dead' : ''}${a.id === selected ? ' selected' : ''}" data-id="${esc(a.id)}" data-process="${esc(a.process)}" data-machine="${esc(a.machine)}" data-target="${esc((a.context || {}).target || '')}" data-state="${esc(flat(a.value))}" data-seen="${esc((a.seen || []).join(' '))}"${dead ? ' title="its process is down: the state it was in then"' : ''}>` +
              `<span class="state ${color(a)}">${esc(stateText(a))}</span> ${esc(label(a))}${dead ? down : ''}</div>`,
          )
          .join('')
      );
    })
    .join('');
  const f = $('filter').value.trim();
  const pool = view === 'all' ? [...rows.protocol, ...rows.internal].sort((x, y) => x.t - y.t) : rows.protocol;
  const shown = pool
    .filter((r) => !f || r.requestId.includes(f) || r.target.includes(f))
    .slice(-300)
    .reverse();
  $('rows').innerHTML = shown
    .map(
      (r) =>
        `<tr data-kind="${r.kind}"><td>${new Date(r.t).toISOString().slice(11, 23)}</td><td class="from">${esc(r.from)}</td><td class="to">${esc(r.to)}</td><td class="type">${esc(r.type)}</td><td class="request">${esc(r.requestId)}</td><td class="target">${esc(r.target)}</td><td class="detail">${esc(r.detail)}</td></tr>`,
    )
    .join('');
  drawChart();
}

$('actors').addEventListener('click', (e) => {
  const row = e.target.closest('.actor');
  if (!row) return;
  selected = row.dataset.id;
  lastDrawn = '';
  dirty = true;
});
$('filter').addEventListener('input', () => (dirty = true));
for (const v of ['protocol', 'all']) {
  $(`view-${v}`).addEventListener('click', () => {
    view = v;
    for (const w of ['protocol', 'all']) $(`view-${w}`).setAttribute('aria-pressed', String(w === view));
    dirty = true;
  });
}

// ---- Statechart, laid out by ELK from the machine definition ----
const elk = typeof ELK === 'function' ? new ELK() : null;
let lastDrawn = '';

function activeIds(prefix, value) {
  if (value === undefined) return [];
  if (typeof value === 'string') return [`${prefix}.${value}`];
  return Object.entries(value).flatMap(([k, v]) => [`${prefix}.${k}`, ...activeIds(`${prefix}.${k}`, v)]);
}

/** ELK graph of a machine config: state nodes with ids like the machine's (session.connected.liveness). */
function toElk(def) {
  const edges = [];
  const targetsOf = (t) =>
    Array.isArray(t)
      ? t.flatMap(targetsOf)
      : typeof t === 'string'
        ? [t]
        : t && t.target !== undefined
          ? targetsOf(t.target)
          : [];
  const resolve = (t, id, parent) => (t.startsWith('#') ? t.slice(1) : t.startsWith('.') ? id + t : `${parent}.${t}`);
  const short = (ev) => ev.replace(/^xstate\.(done|error)\.actor.*$/, '$1');
  const node = (key, d, id, parent) => {
    const add = (ev, t) => {
      for (const target of targetsOf(t))
        edges.push({ id: `e${edges.length}`, sources: [id], targets: [resolve(target, id, parent)], label: ev });
    };
    for (const [ev, t] of Object.entries(d.on || {})) add(short(ev), t);
    for (const [delay, t] of Object.entries(d.after || {})) add(`after ${delay}`, t);
    if (d.always) add('always', d.always);
    if (d.invoke)
      for (const inv of [].concat(d.invoke)) {
        if (inv.onDone) add('done', inv.onDone);
        if (inv.onError) add('error', inv.onError);
      }
    const children = Object.entries(d.states || {}).map(([k, c]) => node(k, c, `${id}.${k}`, id));
    return children.length
      ? {
          id,
          labels: [{ text: key }],
          children,
          layoutOptions: { 'elk.padding': '[top=24,left=10,bottom=10,right=10]' },
        }
      : { id, labels: [{ text: key }], width: Math.max(70, key.length * 7 + 20), height: 30 };
  };
  const root = node(def.id, def, def.id, '');
  const ids = new Set();
  const walk = (n) => {
    ids.add(n.id);
    (n.children || []).forEach(walk);
  };
  walk(root);
  return {
    id: 'root',
    layoutOptions: {
      'elk.algorithm': 'layered',
      'elk.hierarchyHandling': 'INCLUDE_CHILDREN',
      'elk.spacing.nodeNode': '24',
    },
    children: root.children || [root],
    edges: edges
      .filter((e) => (ids.has(e.targets[0]) && e.sources[0] !== def.id) || ids.has(e.targets[0]))
      .map((e) => ({ ...e, labels: [{ text: e.label, width: e.label.length * 5.5, height: 10 }] })),
  };
}

async function drawChart() {
  const a = selected && actors.get(selected);
  if (!a || !a.def || !elk) return;
  const key = `${a.id}|${flat(a.value)}|${a.lastEvent}`;
  if (key === lastDrawn) return;
  lastDrawn = key;
  $('chart-title').textContent = `Statechart: ${a.machine} of ${a.process} / ${label(a)} — ${flat(a.value)}`;
  const graph = await elk.layout(toElk(a.def));
  const current = new Set(activeIds(a.def.id, a.value));
  const prev = new Set(activeIds(a.def.id, a.prev));
  const parts = [];
  const drawNode = (n, ox, oy) => {
    const x = ox + n.x,
      y = oy + n.y;
    const compound = (n.children || []).length > 0;
    parts.push(
      `<g class="node${current.has(n.id) ? ' current' : ''}${compound ? ' compound' : ''}" data-state-id="${esc(n.id)}"><rect x="${x}" y="${y}" width="${n.width}" height="${n.height}" rx="6"></rect><text x="${x + 8}" y="${y + (compound ? 15 : n.height / 2 + 4)}">${esc(n.labels[0].text)}</text></g>`,
    );
    for (const c of n.children || []) drawNode(c, x, y);
  };
  for (const c of graph.children || []) drawNode(c, 0, 0);
  for (const e of graph.edges || []) {
    const isLast =
      a.lastEvent &&
      e.labels &&
      e.labels[0] &&
      (String(a.lastEvent).includes(e.labels[0].text) || e.labels[0].text === a.lastEvent) &&
      prev.has(e.sources[0]) &&
      current.has(e.targets[0]);
    for (const s of e.sections || []) {
      const pts = [s.startPoint, ...(s.bendPoints || []), s.endPoint];
      parts.push(
        `<g class="edge${isLast ? ' last' : ''}"><path d="M${pts.map((p) => `${p.x},${p.y}`).join(' L')}" marker-end="url(#arrow)"></path>${(e.labels || []).map((l) => `<text x="${l.x}" y="${l.y + 8}">${esc(l.text)}</text>`).join('')}</g>`,
      );
    }
  }
  $('svg').innerHTML =
    `<svg viewBox="0 0 ${graph.width + 20} ${graph.height + 20}" height="${Math.min(graph.height + 20, 520)}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#8c959f"></path></marker></defs>${parts.join('')}</svg>`;
}

// ---- Faults and the summary strip, through the launcher's control commands ----
async function command(path, body) {
  const res = await fetch(`/api/${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization },
    body: JSON.stringify(body || {}),
  });
  const r = await res.json();
  $('result').textContent = r.ok ? `${path}: ok` : `${path}: ${r.code} ${r.message}`;
  return r;
}

document.body.addEventListener('click', (e) => {
  const b = e.target.closest('button[data-action]');
  if (!b) return;
  const { action, id } = b.dataset;
  if (action === 'kill' || action === 'restart') command(action, { id });
  else if (action === 'dismount') command('dismount', { replica: id, for: 10 });
  else if (action === 'partition') command('partition', { node: id });
  else if (action === 'heal') command('heal', { node: id });
});
$('fw-go').addEventListener('click', () =>
  command('write', { target: $('fw-target').value, text: $('fw-text').value, as: 'intruder' }),
);
$('reboot').addEventListener('click', () => command('reboot-storage'));

// A node's block export, from the same status: its address and, per client connection, the handle
// serving it (its state, the reason once invalidated, and the requests in flight). A node that is
// down reports no export, so its rows go.
function nbdRows(n) {
  if (!n.nbd) return '';
  const conns = n.nbd.connections.map((c) => {
    const state = c.reason ? `${c.state}: ${c.reason}` : c.state;
    const tone = ['active', 'paused', 'resuming', 'invalidated'].includes(c.state) ? c.state : 'other';
    return `<div class="row conn" data-state="${esc(c.state)}"><span class="target">${esc(c.target)}</span> <span class="state ${tone}">${esc(state)}</span> <span class="requests" title="requests in flight">${esc(c.requests)} in flight</span></div>`;
  });
  return `<div class="nbd" data-nbd="${esc(n.id)}"><div class="row">nbd <code class="url">${esc(n.nbd.url)}</code>${conns.length ? '' : ' <span class="idle">no clients</span>'}</div>${conns.join('')}</div>`;
}

async function poll() {
  if (!token) return;
  try {
    const res = await fetch('/api/status', { headers: { authorization } });
    if (res.status === 401) {
      refused = 'token refused: open the address safe-resume up printed (a new cluster has a new token)';
      $('conn').textContent = refused;
      return;
    }
    refused = '';
    const s = await res.json();
    const faults = [
      ...s.replicas.map(
        (r) =>
          `<div class="row" data-replica="${esc(r.id)}"><b>${esc(r.id)}</b> <span class="state ${r.state === 'serving' ? 'active' : r.state === 'down' ? 'invalidated' : 'paused'}">${esc(r.state)}</span> <button data-action="kill" data-id="${esc(r.id)}">kill</button><button data-action="restart" data-id="${esc(r.id)}">restart</button><button data-action="dismount" data-id="${esc(r.id)}">dismount 10s</button></div>`,
      ),
      ...(s.etcd || []).map(
        (m) =>
          `<div class="row" data-etcd="${esc(m.id)}"><b>${esc(m.id)}</b> ${esc(m.endpoint)} <span class="state ${m.state === 'running' ? 'active' : 'invalidated'}">${esc(m.state)}</span> <button data-action="kill" data-id="${esc(m.id)}">kill</button><button data-action="restart" data-id="${esc(m.id)}">restart</button></div>`,
      ),
      ...s.nodes.map(
        (n) =>
          `<div class="row" data-node="${esc(n.id)}"><b>${esc(n.id)}</b> on ${esc(n.replica || '-')} ${n.state === 'down' ? '<span class="state invalidated">down</span>' : ''}${n.partitioned ? '<span class="state paused">partitioned</span>' : ''} <button data-action="partition" data-id="${esc(n.id)}">partition</button><button data-action="heal" data-id="${esc(n.id)}">heal</button></div>` +
          nbdRows(n),
      ),
    ];
    $('fault-rows').innerHTML = faults.join('');
    // Counted since the cluster started: the launcher keeps what processes that restarted had counted.
    $('s-acked').textContent = s.totals.acked;
    $('s-pauses').textContent = s.totals.pauses || 0;
    $('s-granted').textContent = s.totals.resumesGranted || 0;
    $('s-denied').textContent = s.totals.resumesDenied || 0;
    procs.clear();
    for (const p of [...s.replicas, ...s.nodes])
      procs.set(p.id, { state: p.state, startedAt: p.startedAt, exitedAt: p.exitedAt });
    // Kept once seen: a node that goes down reports its handles no more, and its actors stay drawn.
    for (const h of s.handles) if (h.reason && h.requestId) reasons.set(`${h.node}\u0000${h.requestId}`, h.reason);
    dirty = true;
    if (s.chaos) {
      $('s-verdict').textContent = s.chaos.verdict;
      $('verdict').className = s.chaos.violations ? 'fail' : '';
    }
  } catch {
    /* the launcher is restarting or gone; try again */
  }
}

// ---- Timeline: the launcher's story of faults, processes and handle transitions ----
// Polled with the status; each answer carries `next`, passed back so only newer events come, and only
// those are appended. Newest at the bottom, read as a story; the list follows the newest unless it was
// scrolled up.
const timeline = [];
let tlNext = 0;
let tlBusy = false;
const TL_MAX = 5000;

// As `safe-resume events --target T`: that target's handles, and every fault and process event.
const tlShown = (e, target) => !target || e.kind !== 'handle' || e.target === target;

function tlRow(e) {
  let cls = e.kind;
  let text;
  if (e.kind === 'fault') text = esc(e.what);
  else if (e.kind === 'refused')
    text = `${esc(e.what)} <span class="detail">(${esc(e.code)}: ${esc(e.message)})</span>`;
  else if (e.kind === 'process') {
    cls += ` ${e.what}`;
    text = `${esc(e.id)} ${esc(e.what)}${e.detail ? ` <span class="detail">(${esc(e.detail)})</span>` : ''}`;
  } else {
    const tone = ['active', 'paused', 'resuming', 'invalidated'].includes(e.to) ? e.to : 'other';
    text =
      `${esc(`${e.node}/${e.app}`)} ${esc(e.target)} ${esc(e.from)} -&gt; <span class="to ${tone}">${esc(e.to)}</span>` +
      `${e.reason ? ` <span class="reason">${esc(e.reason)}</span>` : ''}${e.detail ? ` <span class="detail">(${esc(e.detail)})</span>` : ''}` +
      `${e.changed ? ` <span class="detail">changed: ${esc(e.changed)}</span>` : ''}`;
  }
  return `<div class="ev ${esc(cls)}" data-kind="${esc(e.kind)}" data-target="${esc(e.target || '')}" data-at="${Number(e.at)}"><span class="at">${new Date(e.at).toISOString().slice(11, 23)}</span><span class="kind ${esc(e.kind)}">${esc(e.kind)}</span><span class="text">${text}</span></div>`;
}

// Draw `events` at the end of the list (all of it again with `redraw`), keeping to the bottom if it was there.
function tlDraw(events, redraw) {
  const box = $('tl-rows');
  const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  const target = $('tl-target').value.trim();
  const html = events
    .filter((e) => tlShown(e, target))
    .map(tlRow)
    .join('');
  if (redraw) box.innerHTML = html || '<div id="tl-empty">nothing yet</div>';
  else if (html) {
    const empty = $('tl-empty');
    if (empty) empty.remove();
    box.insertAdjacentHTML('beforeend', html);
  }
  if (atBottom || redraw) box.scrollTop = box.scrollHeight;
}

async function pollTimeline() {
  if (!token || refused || tlBusy) return;
  tlBusy = true;
  try {
    const res = await fetch(`/api/events?after=${tlNext}`, { headers: { authorization } });
    if (!res.ok) return;
    const r = await res.json();
    if (!Array.isArray(r.events) || !Number.isSafeInteger(r.next)) return;
    // A cursor behind ours: a new launcher; start over from its first event.
    if (r.next < tlNext) {
      timeline.length = 0;
      tlNext = 0;
      tlDraw(timeline, true);
      return;
    }
    tlNext = r.next;
    // In the order things happened: a node reports a handle's change after later events, so one may
    // sort before rows already drawn (then the list is drawn again).
    const last = timeline.length ? timeline[timeline.length - 1].at : -Infinity;
    const early = r.events.some((e) => e.at < last);
    timeline.push(...r.events);
    if (early) timeline.sort((a, b) => a.at - b.at || a.seq - b.seq);
    if (timeline.length > TL_MAX) timeline.splice(0, timeline.length - TL_MAX);
    if (early || timeline.length >= TL_MAX) tlDraw(timeline, true);
    else tlDraw(r.events, false);
  } catch {
    /* the launcher is restarting or gone; try again */
  } finally {
    tlBusy = false;
  }
}

$('tl-target').addEventListener('input', () => tlDraw(timeline, true));

function connect() {
  if (!token) {
    $('conn').textContent = refused;
    return;
  }
  // A browser cannot set headers on a WebSocket: the token goes in the query.
  const ws = new WebSocket(`ws://${location.host}/stream?token=${encodeURIComponent(token)}`);
  ws.onopen = () => ($('conn').textContent = 'live');
  // Each message is a JSON array of events (one per event-loop turn of the launcher).
  ws.onmessage = (m) => {
    const evs = parse(m.data);
    for (const ev of Array.isArray(evs) ? evs : evs ? [evs] : []) onEvent(ev);
  };
  ws.onclose = () => {
    $('conn').textContent = refused || 'reconnecting…';
    setTimeout(connect, 1000);
  };
}

connect();
setInterval(render, 250);
setInterval(() => (poll(), pollTimeline()), 1000);
poll().then(pollTimeline);
