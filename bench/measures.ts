/** The measurements the benchmark groups are made of: the I/O path, failover, partitions, resume storms, memory, the inspector. */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { WebSocket } from 'ws';
import { Application, type Handle } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { StorageReplica } from '../actors/replica.js';
import { MemoryStore } from '../store/memory.js';
import { FaultProxy } from '../transport/fault-proxy.js';
import { processInspector, type ProcessInspector } from '../runtime/inspect.js';
import { InspectorServer } from '../runtime/inspector-server.js';
import type { Env } from '../actors/env.js';
import { freePort } from '../transport/ports.js';
import { WebSocketTransport } from '../transport/ws.js';
import type { Connection } from '../transport/types.js';
import { nanoid } from 'nanoid';
import { issueCredential } from '../actors/auth.js';
import { bareLogin } from '../actors/handshake.js';
import { replicaProcess, ROOT, SECRET } from './replica-process.js';
import { now, pct, within } from './figures.js';

export async function agentWith(
  url: string[],
  handles: number,
  opts: { heartbeatIntervalMs?: number; env?: Partial<Env> } = {},
): Promise<{ agent: NodeAgent; hs: Handle[] }> {
  const agent = new NodeAgent({
    id: `bench-${Math.random().toString(36).slice(2, 8)}`,
    replicas: url,
    transport: new WebSocketTransport(),
    secret: SECRET,
    ...opts,
  });
  await agent.start();
  const app = new Application(agent, {
    name: 'bench',
    pauseTimeoutMs: 600_000,
    ...(opts.env ? { env: opts.env } : {}),
  });
  const hs: Handle[] = [];
  for (let i = 0; i < handles; i += 500)
    hs.push(
      ...(await Promise.all(
        Array.from({ length: Math.min(500, handles - i) }, (_, j) => app.open(`t-${agent.id}-${i + j}`)),
      )),
    );
  return { agent, hs };
}

export const DATA = new Uint8Array(4096).fill(7);

/** Raw `ws`: 4 KiB messages echoed by another process, sequential and pipelined. */
export async function wsEcho(
  count: number,
  window: number,
  sequential: number,
): Promise<{ p50: number; p99: number; rate: number }> {
  const port = await freePort();
  const server = spawn(
    process.execPath,
    [
      '-e',
      `const { WebSocketServer } = require(${JSON.stringify(join(ROOT, 'node_modules', 'ws'))}); const s = new WebSocketServer({ port: ${port}, host: '127.0.0.1' }); s.on('connection', (ws) => ws.on('message', (d) => ws.send(d))); s.on('listening', () => console.log('up'));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise((r) => server.stdout.once('data', r));
  const ws = new WebSocket(`ws://127.0.0.1:${port}`);
  await new Promise((r) => ws.once('open', r));
  const lat: number[] = [];
  for (let i = 0; i < Math.min(count, sequential); i++) {
    const t = now();
    await new Promise<void>((r) => {
      ws.once('message', () => r());
      ws.send(DATA);
    });
    lat.push(now() - t);
  }
  let sent = 0;
  let got = 0;
  const t0 = now();
  await new Promise<void>((done) => {
    ws.on('message', () => {
      got++;
      if (got === count) return done();
      if (sent < count) {
        sent++;
        ws.send(DATA);
      }
    });
    for (; sent < Math.min(window, count); sent++) ws.send(DATA);
  });
  const rate = count / ((now() - t0) / 1000);
  ws.close();
  server.kill();
  return { p50: pct(lat, 50), p99: pct(lat, 99), rate };
}

/** Application -> node agent -> ws -> replica process: sequential latency and pipelined throughput of 4 KiB writes. */
export async function ioPath(
  url: string,
  count: number,
  apps: number,
  depth: number,
  opts: { sequential?: number; env?: Partial<Env> } = {},
): Promise<{ p50: number; p99: number; rate: number; readP50: number }> {
  const { agent, hs } = await agentWith([url], apps, opts.env ? { env: opts.env } : {});
  const h = hs[0]!;
  const lat: number[] = [];
  const rlat: number[] = [];
  for (let i = 0; i < (opts.sequential ?? Math.min(count, 2000)); i++) {
    let t = now();
    await h.write((i % 64) * 4096, DATA);
    lat.push(now() - t);
    t = now();
    await h.read((i % 64) * 4096, 4096);
    rlat.push(now() - t);
  }
  const t0 = now();
  const per = Math.ceil(count / apps);
  await Promise.all(
    hs.map(async (x) => {
      let next = 0;
      await Promise.all(
        Array.from({ length: depth }, async () => {
          while (next < per) {
            const i = next++;
            await x.write((i % 64) * 4096, DATA);
          }
        }),
      );
    }),
  );
  const rate = (per * apps) / ((now() - t0) / 1000);
  agent.crash();
  return { p50: pct(lat, 50), p99: pct(lat, 99), rate, readP50: pct(rlat, 50) };
}

/** The raw baseline of durability: one better-sqlite3 compare-and-set transaction of a 4 KiB row per write, synchronous=FULL. */
export function rawSqlite(dir: string, count: number): number {
  const db = new Database(join(dir, 'raw.sqlite'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, seq INTEGER, data BLOB)');
  db.prepare('INSERT OR REPLACE INTO t VALUES (?, 0, ?)').run('k', Buffer.from(DATA));
  const get = db.prepare<[string], { seq: number }>('SELECT seq FROM t WHERE k = ?');
  const put = db.prepare('UPDATE t SET seq = ?, data = ? WHERE k = ? AND seq = ?');
  const tx = db.transaction((i: number) => {
    const r = get.get('k')!;
    put.run(r.seq + 1, Buffer.from(DATA), 'k', r.seq);
    return i;
  });
  const t0 = now();
  for (let i = 0; i < count; i++) tx.immediate(i);
  const rate = count / ((now() - t0) / 1000);
  db.close();
  return rate;
}

/** SIGKILL the replica serving `n` handles; time until each handle is active on the other replica. */
export async function failover(
  dir: string,
  n: number,
  agents: number,
  store: 'sqlite' | `etcd://${string}` = 'sqlite',
): Promise<number[]> {
  const a = await replicaProcess(dir, store);
  const b = await replicaProcess(dir, store);
  const groups = await Promise.all(
    Array.from({ length: agents }, () => agentWith([a.url, b.url], Math.ceil(n / agents))),
  );
  // The replica that serves the agents is killed (on a loaded machine an agent may have moved to the
  // other one while they were set up; its handles would never pause, so they are not waited for).
  const victim = groups[0]!.agent.replica === b.id ? b : a;
  const other = victim === a ? b : a;
  const all = groups.filter((g) => g.agent.replica === victim.id).flatMap((g) => g.hs);
  if (all.length < n / 2) throw new Error(`failover of ${n}: only ${all.length} handles on the replica to kill`);
  const times: number[] = [];
  const t0 = now();
  const done = Promise.all(
    all.map(
      (h) =>
        new Promise<void>((resolve) => {
          let paused = false;
          const on = (s: string) => {
            if (s === 'paused') paused = true;
            if (paused && s === 'active') {
              times.push(now() - t0);
              h.off('state', on);
              resolve();
            }
          };
          h.on('state', on);
        }),
    ),
  );
  victim.proc.kill('SIGKILL');
  await within(done, 120_000, undefined);
  if (times.length < all.length)
    throw new Error(
      `failover of ${n}: only ${times.length} of ${all.length} handles active again within 120 s (agents on ${groups.map((g) => g.agent.replica ?? 'none').join(', ')})`,
    );
  for (const g of groups) g.agent.crash();
  other.proc.kill('SIGKILL');
  return times;
}

/** A silent partition (a fault proxy stops passing bytes): time to pause and to resume elsewhere. */
export async function silentPartition(dir: string, heartbeatMs: number): Promise<{ detect: number; resume: number }> {
  // Both replicas over one SQLite file, so the other one can grant the resume.
  // The replicas set the heartbeat interval; the agent adopts it (and would refuse another).
  const a = await replicaProcess(dir, 'sqlite', { heartbeatIntervalMs: heartbeatMs });
  const b = await replicaProcess(dir, 'sqlite', { heartbeatIntervalMs: heartbeatMs });
  const proxy = FaultProxy.forUrl(a.url);
  const pa = await proxy.listen();
  const { agent, hs } = await agentWith([pa, b.url], 1, { heartbeatIntervalMs: heartbeatMs });
  const h = hs[0]!;
  const t0 = now();
  let detect = 0;
  const resumed = new Promise<number>((r) =>
    h.on('state', (s) => {
      if (s === 'paused') detect = now() - t0;
      if (s === 'active') r(now() - t0);
    }),
  );
  proxy.partition();
  const resume = await within(resumed, 60_000, NaN);
  agent.crash();
  await proxy.close();
  a.proc.kill();
  b.proc.kill();
  return { detect, resume };
}

/** Resumes one replica grants per second: n paused handles resume at once after a dropped link. */
export async function resumeStorm(dir: string, n: number): Promise<number> {
  const a = await replicaProcess(dir, 'memory');
  const proxy = FaultProxy.forUrl(a.url);
  const pa = await proxy.listen();
  const { agent, hs } = await agentWith([pa], n);
  let paused = 0;
  let active = 0;
  let t0 = 0;
  const done = new Promise<number>((resolve) => {
    for (const h of hs)
      h.on('state', (s) => {
        if (s === 'paused' && ++paused === 1) t0 = now();
        if (s === 'active' && ++active === n) resolve(now() - t0);
      });
  });
  proxy.drop();
  const ms = await within(done, 120_000, NaN);
  agent.crash();
  if (Number.isNaN(ms))
    throw new Error(`resume storm of ${n}: only ${active} of ${n} handles active again within 120 s`);
  await proxy.close();
  a.proc.kill();
  return n / (ms / 1000);
}

/**
 * Inspector overhead: pipelined writes with every actor's inspection events streamed to an inspector
 * server and on to a watching browser (a WebSocket client that reads the stream).
 */
export async function inspectorOn(url: string, count: number, apps: number, depth: number): Promise<number> {
  // The server is made before the inspector that streams to it: it watches once that is there.
  const made: { insp?: ProcessInspector } = {};
  const server = new InspectorServer({
    watching: (on) => made.insp?.watch(on),
    status: () => ({}),
    command: async () => ({ ok: false }),
  });
  const base = await server.listen(0);
  const insp = processInspector(`${base.replace('http', 'ws')}/inspect?from=bench`, server.processCredential('bench'));
  made.insp = insp;
  const browser = new WebSocket(`${base.replace('http', 'ws')}/stream`, {
    headers: { authorization: `Bearer ${server.token}` },
  });
  let events = 0;
  browser.on('message', () => events++);
  await new Promise((r) => browser.once('open', r));
  const io = await ioPath(url, count, apps, depth, { sequential: 0, env: { inspect: insp.inspect } });
  if (events === 0) throw new Error('the inspector stream carried no events');
  browser.close();
  insp.stop();
  await server.close();
  return io.rate;
}

const heap = () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  gc?.();
  return process.memoryUsage().heapUsed;
};

/** Heap bytes per open handle on the node agent side (the replica runs in another process). */
export async function agentMemory(dir: string, n: number): Promise<number> {
  const r = await replicaProcess(dir, 'memory');
  const before = heap();
  const { agent, hs } = await agentWith([r.url], n);
  const after = heap();
  void hs.length;
  agent.crash();
  r.proc.kill();
  return (after - before) / n;
}

/** A bare protocol client: hello, then frames in and out, answers counted by type. */
async function bareClient(
  url: string,
): Promise<{ conn: Connection; answers: (type: string, n: number) => Promise<void> }> {
  const conn = await new WebSocketTransport().connect(url);
  const counts = new Map<string, number>();
  const waiters: Array<{ type: string; n: number; done: () => void }> = [];
  const login = bareLogin(
    issueCredential(SECRET, 'node', 'bench'),
    [issueCredential(SECRET, 'principal', 'p')],
    nanoid(),
  );
  conn.onFrame((f) => {
    if (!f.ok) return;
    const auth = login.answer(f.msg);
    if (auth) return void conn.send(auth);
    const c = (counts.get(f.msg.type) ?? 0) + 1;
    counts.set(f.msg.type, c);
    for (const w of waiters) if (w.type === f.msg.type && c >= w.n) w.done();
  });
  conn.send(login.hello);
  const answers = (type: string, n: number) =>
    new Promise<void>((done) => ((counts.get(type) ?? 0) >= n ? done() : waiters.push({ type, n, done })));
  await answers('welcome', 1);
  return { conn, answers };
}

const rid = (i: number) => `r${String(i).padStart(20, '0')}`;

/**
 * Resumes one replica process grants per second: a bare client opens n handles, its connection
 * drops, and a new session resumes them all in batches of 1,000 (as a node agent sends them).
 * Timed from the first resume sent to the last answer.
 */
export async function replicaResumes(
  dir: string,
  n: number,
  store: 'memory' | `etcd://${string}` = 'memory',
): Promise<number> {
  const r = await replicaProcess(dir, store);
  const first = await bareClient(r.url);
  for (let i = 0; i < n; i++)
    first.conn.send({ type: 'open', id: i + 1, target: `t${i}`, requestId: rid(i), principal: 'p', mode: 'write' });
  await first.answers('opened', n);
  first.conn.close();
  const second = await bareClient(r.url);
  const batches = Math.ceil(n / 1000);
  const t0 = now();
  for (let b = 0; b < batches; b++) {
    const items = Array.from({ length: Math.min(1000, n - b * 1000) }, (_, j) => ({
      target: `t${b * 1000 + j}`,
      requestId: rid(b * 1000 + j),
      principal: 'p',
      mode: 'write' as const,
    }));
    second.conn.send({ type: 'resume', id: b + 1, items });
  }
  const answered = await within(
    second.answers('resumed', batches).then(() => true),
    60_000,
    false,
  );
  const ms = now() - t0;
  second.conn.close();
  r.proc.kill();
  if (!answered) throw new Error(`replica resumes of ${n}: not every batch answered within 60 s`);
  return n / (ms / 1000);
}

/** Heap bytes per open handle on a replica (in this process), opened by a bare protocol client. */
export async function replicaMemory(n: number): Promise<number> {
  const replica = new StorageReplica({
    id: 'mem',
    store: new MemoryStore(),
    transport: new WebSocketTransport(),
    secret: SECRET,
    port: await freePort(),
  });
  await replica.start();
  const client = await bareClient(replica.url);
  const before = heap();
  for (let i = 0; i < n; i++)
    client.conn.send({ type: 'open', id: i + 1, target: `t${i}`, requestId: rid(i), principal: 'p', mode: 'write' });
  await client.answers('opened', n);
  const after = heap();
  client.conn.close();
  await replica.stop();
  return (after - before) / n;
}
