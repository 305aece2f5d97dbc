/**
 * safe-resume benchmarks: each figure measured next to its baseline in the same run.
 *   npm run bench            the full run; writes bench/results/latest.json, BENCHMARKS.md, bench/results/failover.svg
 *   npm run bench -- --smoke tiny sizes, to check the harness works (npm test runs this; no speeds asserted)
 *   npm run bench -- --json  the figures as JSON on stdout
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { WebSocket } from 'ws';
import { Application, type Handle } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { StorageReplica } from '../actors/replica.js';
import { MemoryStore } from '../store/memory.js';
import { FaultProxy } from '../cluster/fault-proxy.js';
import { processInspector, type ProcessInspector } from '../cluster/inspect.js';
import { InspectorServer } from '../cluster/inspector-server.js';
import type { Env } from '../actors/env.js';
import { freePort } from '../transport/ports.js';
import { runSeeds } from '../sim/run.js';
import { runSeedsParallel } from '../sim/parallel.js';
import { WebSocketTransport } from '../transport/ws.js';
import type { Connection } from '../transport/types.js';
import { nanoid } from 'nanoid';
import { issueCredential } from '../actors/auth.js';
import { bareLogin } from '../actors/handshake.js';
import { etcdMembers, leaderChange, rawEtcd } from './etcd.js';
import { failoverStall, qemuImgBench, qemuNbd } from './nbd.js';
import { replicaProcess, ROOT, SECRET } from './replica-process.js';
import { NbdExport } from '../frontends/nbd.js';

export { ROOT };

export interface Figure {
  name: string;
  value: number;
  unit: string;
  baseline: number | null;
  baselineName: string | null;
  ratio: number | null;
  target: string;
  met: boolean | null;
}

/** Rounds of each throughput figure and its baseline, alternated; the medians are compared. */
const ROUNDS = 3;
const now = () => performance.now();
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
};
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

/** `p`, or `fallback` after `ms`; the timer is cleared either way (a pending one kept the process alive). */
function within<T, F>(p: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<F>((r) => (timer = setTimeout(() => r(fallback), ms)))]).finally(() => clearTimeout(timer));
}

async function agentWith(url: string[], handles: number, opts: { heartbeatIntervalMs?: number; env?: Partial<Env> } = {}): Promise<{ agent: NodeAgent; hs: Handle[] }> {
  const agent = new NodeAgent({ id: `bench-${Math.random().toString(36).slice(2, 8)}`, replicas: url, transport: new WebSocketTransport(), secret: SECRET, ...opts });
  await agent.start();
  const app = new Application(agent, { name: 'bench', pauseTimeoutMs: 600_000, ...(opts.env ? { env: opts.env } : {}) });
  const hs: Handle[] = [];
  for (let i = 0; i < handles; i += 500) hs.push(...(await Promise.all(Array.from({ length: Math.min(500, handles - i) }, (_, j) => app.open(`t-${agent.id}-${i + j}`)))));
  return { agent, hs };
}

const DATA = new Uint8Array(4096).fill(7);

/** Raw `ws`: 4 KiB messages echoed by another process, sequential and pipelined. */
async function wsEcho(count: number, window: number, sequential: number): Promise<{ p50: number; p99: number; rate: number }> {
  const port = await freePort();
  const server = spawn(process.execPath, ['-e', `const { WebSocketServer } = require(${JSON.stringify(join(ROOT, 'node_modules', 'ws'))}); const s = new WebSocketServer({ port: ${port}, host: '127.0.0.1' }); s.on('connection', (ws) => ws.on('message', (d) => ws.send(d))); s.on('listening', () => console.log('up'));`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => server.stdout!.once('data', r));
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
      if (sent < count) (sent++, ws.send(DATA));
    });
    for (; sent < Math.min(window, count); sent++) ws.send(DATA);
  });
  const rate = count / ((now() - t0) / 1000);
  ws.close();
  server.kill();
  return { p50: pct(lat, 50), p99: pct(lat, 99), rate };
}

/** Application -> node agent -> ws -> replica process: sequential latency and pipelined throughput of 4 KiB writes. */
export async function ioPath(url: string, count: number, apps: number, depth: number, opts: { sequential?: number; env?: Partial<Env> } = {}): Promise<{ p50: number; p99: number; rate: number; readP50: number }> {
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
      await Promise.all(Array.from({ length: depth }, async () => {
        while (next < per) {
          const i = next++;
          await x.write((i % 64) * 4096, DATA);
        }
      }));
    }),
  );
  const rate = (per * apps) / ((now() - t0) / 1000);
  agent.crash();
  return { p50: pct(lat, 50), p99: pct(lat, 99), rate, readP50: pct(rlat, 50) };
}

/** The raw baseline of durability: one better-sqlite3 compare-and-set transaction of a 4 KiB row per write, synchronous=FULL. */
function rawSqlite(dir: string, count: number): number {
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
export async function failover(dir: string, n: number, agents: number, store: 'sqlite' | `etcd://${string}` = 'sqlite'): Promise<number[]> {
  const a = await replicaProcess(dir, store);
  const b = await replicaProcess(dir, store);
  const groups = await Promise.all(Array.from({ length: agents }, () => agentWith([a.url, b.url], Math.ceil(n / agents))));
  // The replica that serves the agents is killed (on a loaded machine an agent may have moved to the
  // other one while they were set up; its handles would never pause, so they are not waited for).
  const victim = groups[0]!.agent.replica === b.id ? b : a;
  const other = victim === a ? b : a;
  const all = groups.filter((g) => g.agent.replica === victim.id).flatMap((g) => g.hs);
  if (all.length < n / 2) throw new Error(`failover of ${n}: only ${all.length} handles on the replica to kill`);
  const times: number[] = [];
  const t0 = now();
  const done = Promise.all(all.map((h) => new Promise<void>((resolve) => {
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
  })));
  victim.proc.kill('SIGKILL');
  await within(done, 120_000, undefined);
  if (times.length < all.length) throw new Error(`failover of ${n}: only ${times.length} of ${all.length} handles active again within 120 s (agents on ${groups.map((g) => g.agent.replica ?? 'none').join(', ')})`);
  for (const g of groups) g.agent.crash();
  other.proc.kill('SIGKILL');
  return times;
}

/** A silent partition (a fault proxy stops passing bytes): time to pause and to resume elsewhere. */
async function silentPartition(dir: string, heartbeatMs: number): Promise<{ detect: number; resume: number }> {
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
  const resumed = new Promise<number>((r) => h.on('state', (s) => {
    if (s === 'paused') detect = now() - t0;
    if (s === 'active') r(now() - t0);
  }));
  proxy.partition();
  const resume = await within(resumed, 60_000, NaN);
  agent.crash();
  await proxy.close();
  a.proc.kill();
  b.proc.kill();
  return { detect, resume };
}

/** Resumes one replica grants per second: n paused handles resume at once after a dropped link. */
async function resumeStorm(dir: string, n: number): Promise<number> {
  const a = await replicaProcess(dir, 'memory');
  const proxy = FaultProxy.forUrl(a.url);
  const pa = await proxy.listen();
  const { agent, hs } = await agentWith([pa], n);
  let paused = 0;
  let active = 0;
  let t0 = 0;
  const done = new Promise<number>((resolve) => {
    for (const h of hs) h.on('state', (s) => {
      if (s === 'paused' && ++paused === 1) t0 = now();
      if (s === 'active' && ++active === n) resolve(now() - t0);
    });
  });
  proxy.drop();
  const ms = await within(done, 120_000, NaN);
  agent.crash();
  if (Number.isNaN(ms)) throw new Error(`resume storm of ${n}: only ${active} of ${n} handles active again within 120 s`);
  await proxy.close();
  a.proc.kill();
  return n / (ms / 1000);
}

/**
 * Inspector overhead: pipelined writes with every actor's inspection events streamed to an inspector
 * server and on to a watching browser (a WebSocket client that reads the stream).
 */
async function inspectorOn(url: string, count: number, apps: number, depth: number): Promise<number> {
  let insp: ProcessInspector | undefined;
  const server = new InspectorServer({ watching: (on) => insp?.watch(on), status: () => ({}), command: async () => ({ ok: false }) });
  const base = await server.listen(0);
  insp = processInspector(`${base.replace('http', 'ws')}/inspect?from=bench`, server.processCredential('bench'));
  const browser = new WebSocket(`${base.replace('http', 'ws')}/stream`, { headers: { authorization: `Bearer ${server.token}` } });
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
async function agentMemory(dir: string, n: number): Promise<number> {
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
async function bareClient(url: string): Promise<{ conn: Connection; answers: (type: string, n: number) => Promise<void> }> {
  const conn = await new WebSocketTransport().connect(url);
  const counts = new Map<string, number>();
  const waiters: Array<{ type: string; n: number; done: () => void }> = [];
  const login = bareLogin(issueCredential(SECRET, 'node', 'bench'), [issueCredential(SECRET, 'principal', 'p')], nanoid());
  conn.onFrame((f) => {
    if (!f.ok) return;
    const auth = login.answer(f.msg);
    if (auth) return void conn.send(auth);
    const c = (counts.get(f.msg.type) ?? 0) + 1;
    counts.set(f.msg.type, c);
    for (const w of waiters) if (w.type === f.msg.type && c >= w.n) w.done();
  });
  conn.send(login.hello);
  const answers = (type: string, n: number) => new Promise<void>((done) => ((counts.get(type) ?? 0) >= n ? done() : waiters.push({ type, n, done })));
  await answers('welcome', 1);
  return { conn, answers };
}

const rid = (i: number) => `r${String(i).padStart(20, '0')}`;

/**
 * Resumes one replica process grants per second: a bare client opens n handles, its connection
 * drops, and a new session resumes them all in batches of 1,000 (as a node agent sends them).
 * Timed from the first resume sent to the last answer.
 */
async function replicaResumes(dir: string, n: number, store: 'memory' | `etcd://${string}` = 'memory'): Promise<number> {
  const r = await replicaProcess(dir, store);
  const first = await bareClient(r.url);
  for (let i = 0; i < n; i++) first.conn.send({ type: 'open', id: i + 1, target: `t${i}`, requestId: rid(i), principal: 'p', mode: 'write' });
  await first.answers('opened', n);
  first.conn.close();
  const second = await bareClient(r.url);
  const batches = Math.ceil(n / 1000);
  const t0 = now();
  for (let b = 0; b < batches; b++) {
    const items = Array.from({ length: Math.min(1000, n - b * 1000) }, (_, j) => ({ target: `t${b * 1000 + j}`, requestId: rid(b * 1000 + j), principal: 'p', mode: 'write' as const }));
    second.conn.send({ type: 'resume', id: b + 1, items });
  }
  const answered = await within(second.answers('resumed', batches).then(() => true), 60_000, false);
  const ms = now() - t0;
  second.conn.close();
  r.proc.kill();
  if (!answered) throw new Error(`replica resumes of ${n}: not every batch answered within 60 s`);
  return n / (ms / 1000);
}

/** Heap bytes per open handle on a replica (in this process), opened by a bare protocol client. */
async function replicaMemory(n: number): Promise<number> {
  const replica = new StorageReplica({ id: 'mem', store: new MemoryStore(), transport: new WebSocketTransport(), secret: SECRET, port: await freePort() });
  await replica.start();
  const client = await bareClient(replica.url);
  const before = heap();
  for (let i = 0; i < n; i++) client.conn.send({ type: 'open', id: i + 1, target: `t${i}`, requestId: rid(i), principal: 'p', mode: 'write' });
  await client.answers('opened', n);
  const after = heap();
  client.conn.close();
  await replica.stop();
  return (after - before) / n;
}

function figure(name: string, value: number, unit: string, baseline: number | null, baselineName: string | null, target: string, met: boolean | null): Figure {
  return { name, value: round(value), unit, baseline: baseline === null ? null : round(baseline), baselineName, ratio: baseline ? round(value / baseline, 3) : null, target, met };
}

/** The groups of figures, in run order; `--only` picks some of them. */
export const GROUPS = ['io', 'durable', 'failover', 'partition', 'storm', 'memory', 'sim', 'inspector', 'etcd', 'nbd'] as const;
export type Group = (typeof GROUPS)[number];

export async function runBench(smoke: boolean, log: (l: string) => void, only: readonly Group[] = GROUPS): Promise<Figure[]> {
  const want = (g: Group) => only.includes(g);
  const dir = mkdtempSync(join(os.tmpdir(), 'safe-resume-bench-'));
  const F: Figure[] = [];
  const s = (full: number, tiny: number) => (smoke ? tiny : full);
  try {
    // This machine's speed drifts from minute to minute, so throughput is measured in rounds that
    // alternate each figure with its baseline, and the medians are compared.
    const R = smoke ? 1 : ROUNDS;
    const med = (xs: number[]) => pct(xs, 50);
    if (want('io') || want('durable') || want('inspector')) {
      const mem = await replicaProcess(dir, 'memory');
      const sq = await replicaProcess(join(dir, 'gc'), 'sqlite');
      const one = await replicaProcess(join(dir, 'nogc'), 'sqlite', { groupCommit: false });
      const r: Record<'echo' | 'mem' | 'insp' | 'sql' | 'one' | 'raw', number[]> = { echo: [], mem: [], insp: [], sql: [], one: [], raw: [] };
      let echoSeq = { p50: 0, p99: 0 };
      let memSeq = { p50: 0, p99: 0, readP50: 0 };
      let sqlSeq = 0;
      for (let i = 0; i < R; i++) {
        log(`I/O round ${i + 1} of ${R}: raw ws echo, memory store${want('inspector') ? ' (inspector off, on)' : ''}, SQLite FULL with and without group commit, raw SQLite`);
        const echo = await wsEcho(s(20_000, 300), 64, i === 0 ? 2000 : 0);
        r.echo.push(echo.rate);
        const io = await ioPath(mem.url, s(20_000, 300), 16, 8, { sequential: i === 0 ? s(2000, 50) : 0 });
        r.mem.push(io.rate);
        if (i === 0) [echoSeq, memSeq] = [echo, io];
        if (want('inspector')) r.insp.push(await inspectorOn(mem.url, s(20_000, 300), 16, 8));
        if (want('io') || want('durable')) {
          const ios = await ioPath(sq.url, s(10_000, 200), 16, 8, { sequential: i === 0 ? s(500, 20) : 0 });
          r.sql.push(ios.rate);
          if (i === 0) sqlSeq = ios.p50;
          r.one.push((await ioPath(one.url, s(5_000, 200), 16, 8, { sequential: 0 })).rate);
          r.raw.push(rawSqlite(dir, s(5_000, 200)));
        }
      }
      for (const p of [mem, sq, one]) p.proc.kill();
      const echo = med(r.echo);
      if (want('io')) {
        F.push(figure('io.write.seq.p50', memSeq.p50, 'ms', echoSeq.p50, 'ws echo p50', 'none', null));
        F.push(figure('io.write.seq.p99', memSeq.p99, 'ms', echoSeq.p99, 'ws echo p99', 'none', null));
        F.push(figure('io.read.seq.p50', memSeq.readP50, 'ms', echoSeq.p50, 'ws echo p50', 'none', null));
        F.push(figure('io.write.pipelined.memory', med(r.mem), 'writes/s', echo, 'ws echo 4 KiB msgs/s', '>= 1.0x', med(r.mem) >= echo));
        F.push(figure('io.write.pipelined.sqlite', med(r.sql), 'writes/s', echo, 'ws echo 4 KiB msgs/s', '>= 1.0x', med(r.sql) >= echo));
      }
      if (want('durable')) {
        const raw = med(r.raw);
        F.push(figure('durable.write.seq.p50', sqlSeq, 'ms', 1000 / raw, 'raw FULL CAS txn, ms each', 'none', null));
        F.push(figure('durable.writes.full', med(r.sql), 'writes/s', raw, 'raw better-sqlite3 CAS txn per 4 KiB write, FULL', '>= 3x', med(r.sql) >= 3 * raw));
        F.push(figure('durable.writes.full.no-group-commit', med(r.one), 'writes/s', raw, 'raw better-sqlite3 CAS txn per 4 KiB write, FULL', 'none', null));
      }
      if (want('inspector')) F.push(figure('inspector.write.pipelined', med(r.insp), 'writes/s', med(r.mem), 'the same writes, inspector off', 'none', null));
    }
    if (want('failover')) {
      const sizes = smoke ? [20] : [100, 1000, 10_000];
      const chart: Array<{ n: number; p50: number; p99: number; max: number }> = [];
      for (const n of sizes) {
        // Every handle's time, pooled over the rounds (one round at 10,000).
        const times: number[] = [];
        const rounds = n >= 10_000 ? 1 : R;
        for (let i = 0; i < rounds; i++) {
          log(`failover of ${n} handles, round ${i + 1} of ${rounds}`);
          times.push(...(await failover(join(dir, `f${n}-${i}`), n, 4)));
        }
        const f = { p50: pct(times, 50), p99: pct(times, 99), max: Math.max(...times) };
        chart.push({ n, ...f });
        F.push(figure(`failover.${n}.p50`, f.p50, 'ms', null, null, 'none', null));
        F.push(figure(`failover.${n}.p99`, f.p99, 'ms', null, null, n === 1000 ? '<= 250 ms' : 'none', n === 1000 ? f.p99 <= 250 : null));
        F.push(figure(`failover.${n}.max`, f.max, 'ms', null, null, 'none', null));
      }
      // Only a full run writes its results (the help says --only writes nothing).
      if (!smoke && only.length === GROUPS.length) writeChart(chart);
    }
    if (want('partition')) {
      log('silent partition');
      const hb = s(1000, 200);
      const sp = await silentPartition(join(dir, 'sp'), hb);
      F.push(figure('partition.detect', sp.detect, 'ms', hb, 'heartbeat interval', '<= 2x', sp.detect <= 2 * hb));
      F.push(figure('partition.resume', sp.resume, 'ms', hb, 'heartbeat interval', 'none', null));
    }
    if (want('storm')) {
      const replica: number[] = [];
      const e2e: number[] = [];
      for (let i = 0; i < R; i++) {
        log(`resume storm round ${i + 1} of ${R}: one replica, then end to end through a node agent`);
        replica.push(await replicaResumes(join(dir, `rr${i}`), s(10_000, 200)));
        e2e.push(await resumeStorm(join(dir, `rs${i}`), s(10_000, 200)));
      }
      F.push(figure('resume.storm', med(replica), 'resumes/s', null, null, '>= 20,000', med(replica) >= 20_000));
      F.push(figure('resume.storm.end-to-end', med(e2e), 'resumes/s', med(replica), 'the replica alone', 'none', null));
    }
    if (want('memory')) {
      for (const n of smoke ? [200] : [10_000, 100_000]) {
        log(`memory per handle at ${n} handles`);
        const am = await agentMemory(join(dir, `m${n}`), n);
        const rm = await replicaMemory(n);
        F.push(figure(`memory.agent.per.handle.${n}`, am, 'bytes', null, null, '<= 1024', am <= 1024));
        F.push(figure(`memory.replica.per.handle.${n}`, rm, 'bytes', null, null, '<= 1024', rm <= 1024));
      }
    }
    if (want('sim')) {
      // Batches long enough that starting the workers and warming up the JIT (about 5 s in all
      // here) do not decide the figure: 200 seeds take 15 s, 600 take 30 s.
      log('simulation speed: one thread, then a worker per core');
      const one = await runSeeds(1, s(200, 5));
      const onePerMin = one.schedules / (one.wallMs / 60_000);
      const cores = os.availableParallelism();
      const all = await runSeedsParallel(1, s(600, 6), cores);
      const perMin = all.schedules / (all.wallMs / 60_000);
      F.push(figure('sim.schedules.per.minute.one-thread', onePerMin, 'schedules/min', null, null, 'none', null));
      F.push(figure(`sim.schedules.per.minute`, perMin, 'schedules/min', onePerMin, `one thread (this run: ${cores} workers)`, '>= 1,000', perMin >= 1000));
    }
    if (want('etcd')) F.push(...(await etcdGroup(dir, smoke, log, R)));
    if (want('nbd')) F.push(...(await nbdGroup(dir, smoke, log, R)));
    return F;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The nbd group (bench/nbd.ts): qemu-img bench through the export (a replica process over SQLite FULL,
 * the node agent and the export in this process) against qemu-nbd serving a raw file, the SDK path
 * (the same writes through an Application handle), and the longest write a client waits through while
 * the replica serving the export is SIGKILLed (two replica processes over one SQLite file).
 */
async function nbdGroup(dir: string, smoke: boolean, log: (l: string) => void, R: number): Promise<Figure[]> {
  const F: Figure[] = [];
  const s = (full: number, tiny: number) => (smoke ? tiny : full);
  const med = (xs: number[]) => pct(xs, 50);
  const size = 64 * 1024 * 1024;
  const replica = await replicaProcess(join(dir, 'nbd'), 'sqlite');
  const { agent } = await agentWith([replica.url], 0);
  const app = new Application(agent, { name: 'nbd-bench', pauseTimeoutMs: 600_000 });
  // Both exports on Unix sockets, the client the same qemu-img.
  const socket = join(dir, 'export.sock');
  const nbd = new NbdExport({ app, size: () => size, path: socket });
  await nbd.listen();
  const url = nbd.urlFor('bench.disk');
  const base = await qemuNbd(dir, size);
  try {
    const cases = [
      { name: 'write.seq', write: true, depth: 1, count: s(2000, 50) },
      { name: 'write.depth16', write: true, depth: 16, count: s(10_000, 200) },
      { name: 'read.seq', write: false, depth: 1, count: s(5000, 50) },
      { name: 'read.depth16', write: false, depth: 16, count: s(20_000, 200) },
    ];
    for (const c of cases) {
      const ours: number[] = [];
      const theirs: number[] = [];
      for (let i = 0; i < R; i++) {
        log(`nbd ${c.name} round ${i + 1} of ${R}: qemu-img bench through the export, then through qemu-nbd`);
        ours.push((await qemuImgBench(url, c.count, c.depth, c.write)).rate);
        theirs.push((await qemuImgBench(base.url, c.count, c.depth, c.write)).rate);
      }
      F.push(figure(`nbd.${c.name}`, med(ours), 'ops/s', med(theirs), 'qemu-nbd serving a raw file (page cache), Unix sockets both', 'none', null));
    }
    log('nbd: the same 4 KiB writes through the SDK, 16 deep');
    const sdk = await ioPath(replica.url, s(10_000, 200), 1, 16, { sequential: 0 });
    F.push(figure('nbd.sdk.write.depth16', sdk.rate, 'writes/s', null, null, 'none', null));
  } finally {
    base.proc.kill();
    await nbd.close();
    agent.crash();
    replica.proc.kill();
  }
  // Each round its own pair of replica processes (one of them is killed); the medians of the rounds.
  const stalls: number[] = [];
  const calm: number[] = [];
  for (let i = 0; i < R; i++) {
    const w = await failoverStall(join(dir, `nbd-failover-${i}`), s(1000, 50), s(1000, 50));
    stalls.push(Math.max(...w.after));
    calm.push(Math.max(...w.before));
    log(`nbd failover round ${i + 1} of ${R}: 4 KiB writes one at a time, the serving replica SIGKILLed; slowest write ${round(stalls[i]!)} ms after the kill, ${round(calm[i]!)} ms before (p99 ${round(pct(w.before, 99))} ms)`);
  }
  F.push(figure('nbd.failover.stall', med(stalls), 'ms', med(calm), 'the slowest write before the kill, same rounds', 'none', null));
  return F;
}

/** The etcd group (bench/etcd.ts): every figure over one three-member etcd, next to a raw client on it. */
async function etcdGroup(dir: string, smoke: boolean, log: (l: string) => void, R: number): Promise<Figure[]> {
  const F: Figure[] = [];
  const s = (full: number, tiny: number) => (smoke ? tiny : full);
  const med = (xs: number[]) => pct(xs, 50);
  const members = await etcdMembers(join(dir, 'etcd'));
  const spec = `etcd://${members.endpoints.join(',')}` as const;
  try {
    const replica = await replicaProcess(join(dir, 'etcd-io'), spec);
    const path: number[] = [];
    const raw: number[] = [];
    let seq = { path: 0, raw: 0 };
    for (let i = 0; i < R; i++) {
      log(`etcd round ${i + 1} of ${R}: fenced writes through a replica, raw guarded transactions`);
      const io = await ioPath(replica.url, s(10_000, 200), 16, 8, { sequential: i === 0 ? s(500, 20) : 0 });
      path.push(io.rate);
      raw.push((await rawEtcd(members.endpoints, s(10_000, 200), 128)).rate);
      if (i === 0) seq = { path: io.p50, raw: (await rawEtcd(members.endpoints, s(500, 20), 1)).p50 };
    }
    F.push(figure('etcd.writes.fenced', med(path), 'writes/s', med(raw), 'raw etcd guarded txn per 4 KiB write, 128 in flight', '>= 1.5x', med(path) >= 1.5 * med(raw)));
    F.push(figure('etcd.write.seq.p50', seq.path, 'ms', seq.raw, 'raw guarded txn one at a time, p50', 'none', null));
    log('etcd: write latency while the leader is killed');
    const { agent, hs } = await agentWith([replica.url], 8);
    const lc = await leaderChange(members, (w, i) => hs[w]!.write((i % 64) * 4096, DATA), { workers: 8, ms: s(12_000, 5000), killAt: s(3000, 1500), downMs: s(4000, 1500), windowMs: s(5000, 2000) });
    agent.crash();
    replica.proc.kill();
    F.push(figure('etcd.write.p99.leader-change', pct(lc.during, 99), 'ms', pct(lc.before, 99), 'p99 before the kill', 'none', null));
    F.push(figure('etcd.write.max.leader-change', Math.max(0, ...lc.during), 'ms', null, null, 'none', null));
    const n = s(1000, 20);
    log(`etcd: failover of ${n} handles`);
    const times = await failover(join(dir, 'etcd-failover'), n, 4, spec);
    F.push(figure(`etcd.failover.${n}.p50`, pct(times, 50), 'ms', null, null, 'none', null));
    F.push(figure(`etcd.failover.${n}.p99`, pct(times, 99), 'ms', null, null, 'none', null));
    log('etcd: resumes one replica grants');
    F.push(figure('etcd.resume.storm', await replicaResumes(join(dir, 'etcd-rr'), s(10_000, 200), spec), 'resumes/s', null, null, 'none', null));
  } finally {
    await members.stop();
  }
  return F;
}

function writeChart(points: Array<{ n: number; p50: number; p99: number; max: number }>): void {
  const W = 520;
  const H = 300;
  const maxY = Math.max(...points.map((p) => p.max), 1);
  const x = (i: number) => 60 + (i * (W - 100)) / Math.max(1, points.length - 1);
  const y = (v: number) => H - 40 - (v / maxY) * (H - 80);
  const line = (k: 'p50' | 'p99' | 'max', color: string) =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.map((p, i) => `${x(i)},${y(p[k])}`).join(' ')}"/>` +
    points.map((p, i) => `<circle cx="${x(i)}" cy="${y(p[k])}" r="3" fill="${color}"/><text x="${x(i) + 5}" y="${y(p[k]) - 5}" font-size="10">${Math.round(p[k])}</text>`).join('');
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/>
<text x="10" y="18" font-size="13">Failover after SIGKILL of the serving replica: time until each handle is active (ms)</text>
<line x1="60" y1="${H - 40}" x2="${W - 30}" y2="${H - 40}" stroke="#888"/><line x1="60" y1="30" x2="60" y2="${H - 40}" stroke="#888"/>
${points.map((p, i) => `<text x="${x(i) - 10}" y="${H - 22}" font-size="11">N=${p.n}</text>`).join('')}
${line('p50', '#1a7f37')}${line('p99', '#c97a00')}${line('max', '#cf222e')}
<text x="${W - 160}" y="40" font-size="11" fill="#1a7f37">p50</text><text x="${W - 120}" y="40" font-size="11" fill="#c97a00">p99</text><text x="${W - 80}" y="40" font-size="11" fill="#cf222e">max</text></svg>`;
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench', 'results', 'failover.svg'), svg);
}

export function table(F: Figure[]): string {
  const rows = F.map((f) => `| ${f.name} | ${f.value} ${f.unit} | ${f.baseline ?? '-'}${f.baselineName ? ` (${f.baselineName})` : ''} | ${f.ratio ?? '-'} | ${f.target} | ${f.met === null ? '-' : f.met ? 'yes' : 'no'} |`);
  return ['| figure | value | baseline | ratio | target | met |', '|---|---|---|---|---|---|', ...rows].join('\n');
}

export function writeResults(F: Figure[]): void {
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench', 'results', 'latest.json'), JSON.stringify({ date: new Date().toISOString(), machine: machine(), figures: F }, null, 2) + '\n');
}

export function machine(): string {
  return `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`;
}
