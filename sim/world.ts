/**
 * The simulated world: the same replicas, node agents and applications as the real cluster, on the
 * in-memory network turned into a seeded faulty one, the in-memory store, and a simulated clock.
 * One seed decides every fault and every delay, so a seed replays a run exactly.
 */
import { pino } from 'pino';
import { Application, type Handle } from '../actors/application.js';
import { seededIds, seededRandom, type Env } from '../actors/env.js';
import { FileKeptIds, MemoryKeptIds } from '../actors/kept.js';
import { NodeAgent } from '../actors/node-agent.js';
import { StorageReplica } from '../actors/replica.js';
import { SafeResumeError } from '../errors.js';
import type { TxStore } from '../store/base.js';
import { MemoryStore } from '../store/memory.js';
import { MemoryNetwork, type Delivery } from '../transport/memory.js';
import type { Connection, Transport } from '../transport/types.js';
import { quiesce, SimClock } from './clock.js';
import { SimDisk } from './disk.js';
import { hex, observedStore, Recorder } from './history.js';

export type MemoryState = MemoryStore['state'];

export interface WorldOptions {
  seed: number;
  replicas: number;
  nodes: number;
  appsPerNode: number;
  holdMs: number;
  pauseTimeoutMs: number;
  /** Build the store of one replica over the shared state. Tests inject broken variants here. */
  makeStore?: (state: MemoryState) => TxStore;
  /** Think time between an application's operations. */
  thinkMs?: [number, number];
  /** Override the simulation's timings. */
  timing?: Partial<typeof TIMING>;
  /** Receives the inspection events of every actor in the world. */
  inspect?: Env['inspect'];
  /** Wrap the transport the replicas serve on. Tests inject broken variants here. */
  replicaTransport?: (t: Transport) => Transport;
  /**
   * Keep each node's requestIds in a file on a simulated disk of its own (page cache, power loss,
   * disk errors: see `disk`) instead of in memory; a restarted agent reads the file back.
   */
  keptOnDisk?: boolean;
}

/** Where a node agent keeps its requestId file on the node's disk. */
export const KEPT_DIR = '/var/lib/safe-resume';

interface Link {
  partitioned: boolean;
  dropP: number;
  dupP: number;
  jitterMs: number;
  /** Frames may overtake each other (a lossy-link fault); otherwise each direction is FIFO, like TCP. */
  reorder: boolean;
  /** Message types from the replica that are held back (queued, in order) until `release`. */
  hold?: Set<string>;
  held?: Array<() => void>;
  /** Frames from the replica vanish; frames to it are delivered (requests arrive, replies are lost). */
  dropReplies?: boolean;
}

export interface Proc {
  id: string;
  app: string;
  node: string;
  target: string;
  application: Application;
  handle: Handle | undefined;
  crashed: boolean;
  stopped: boolean;
  k: number;
}

const SECRET = 'simulation-secret-simulation-secret';
export const SLOT_BYTES = 32;
const SLOTS = 8;
/** The replicas' heartbeat interval is the node agents' too (adopted from welcome). */
export const TIMING = { heartbeatIntervalMs: 100, leaseMs: 300, renewMs: 100, backoffMs: 20, backoffMaxMs: 400, failoverMs: 1500 };

export class World {
  readonly clock = new SimClock();
  readonly timing: typeof TIMING;
  readonly random: () => number;
  readonly history: Recorder;
  readonly env: Env;
  readonly net: MemoryNetwork;
  readonly state: MemoryState = { records: new Map(), tombstones: new Map(), targets: new Map() };
  readonly replicas: Array<StorageReplica | undefined> = [];
  readonly stores: TxStore[] = [];
  readonly agents = new Map<string, NodeAgent | undefined>();
  readonly kept = new Map<string, MemoryKeptIds>();
  /** Each node's disk, with `keptOnDisk`. */
  readonly disks = new Map<string, SimDisk>();
  readonly procs: Proc[] = [];
  readonly faults = new Map<string, number>();
  /** Replicas being started, so two restarts never race. */
  readonly starting = new Set<number>();
  private readonly links = new Map<string, Link>();
  /** Each node's open connections, so a link can be dropped as a socket close would. */
  private readonly conns = new Map<string, Set<Connection>>();
  /** Per node: the message type whose next frame from the node breaks its links (see `breakOn`). */
  private readonly breaks = new Map<string, string>();
  /** Per direction of a link, when its last frame is due (keeps FIFO order unless reordering). */
  private readonly lastDelivery = new Map<string, number>();
  private opId = 0;
  private incarnation = 0;
  stopping = false;
  /** Simulated time skipped by clock jumps. */
  jumpedMs = 0;

  constructor(readonly opts: WorldOptions) {
    this.random = seededRandom(opts.seed);
    this.history = new Recorder(() => this.clock.now());
    this.timing = { ...TIMING, ...opts.timing };
    this.env = { clock: this.clock, random: this.random, newId: seededIds(this.random), log: pino({ level: 'silent' }), inspect: opts.inspect };
    this.net = new MemoryNetwork({ deliver: (fn, d) => this.deliver(fn, d), maxFrameBytes: 1 << 20 });
  }

  get replicaNames(): string[] {
    return Array.from({ length: this.opts.replicas }, (_, i) => `replica-${i + 1}`);
  }

  get nodeNames(): string[] {
    return Array.from({ length: this.opts.nodes }, (_, i) => `node-${i + 1}`);
  }

  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.random() * xs.length)]!;
  }

  between(lo: number, hi: number): number {
    return lo + Math.floor(this.random() * (hi - lo + 1));
  }

  link(node: string, replica: string): Link {
    const key = `${node}|${replica}`;
    let l = this.links.get(key);
    if (!l) {
      l = { partitioned: false, dropP: 0, dupP: 0, jitterMs: 2, reorder: false };
      this.links.set(key, l);
    }
    return l;
  }

  private deliver(fn: () => void, d: Delivery): void {
    const node = d.from.startsWith('node-') ? d.from : d.to;
    const replica = d.from.startsWith('replica-') ? d.from : d.to;
    const l = this.link(node, replica);
    if (l.partitioned) return;
    if (d.kind === 'frame') {
      if (l.dropReplies && d.from === replica) return;
      if (d.from === node && d.type !== undefined && this.breaks.get(node) === d.type) {
        // The frame is lost and the node's connections close right after, as a socket reset would.
        this.breaks.delete(node);
        this.clock.setTimeout(() => this.dropLinks(node), 0);
        return;
      }
    }
    const dir = `${d.from}>${d.to}`;
    const delay = () => {
      const now = this.clock.now();
      let at = now + 1 + Math.floor(this.random() * l.jitterMs);
      if (!l.reorder) at = Math.max(at, this.lastDelivery.get(dir) ?? 0);
      this.lastDelivery.set(dir, Math.max(at, this.lastDelivery.get(dir) ?? 0));
      return at - now;
    };
    if (d.kind === 'close') return void this.clock.setTimeout(fn, delay());
    if (l.hold && d.type && d.from === replica && l.hold.has(d.type)) {
      (l.held ??= []).push(fn);
      return;
    }
    if (l.dropP > 0 && this.random() < l.dropP) return;
    this.clock.setTimeout(fn, delay());
    if (l.dupP > 0 && this.random() < l.dupP) this.clock.setTimeout(fn, delay());
  }

  /** Hold back these replies from every replica to `node` until `release(node)`. */
  hold(node: string, types: string[]): void {
    for (const r of this.replicaNames) {
      const l = this.link(node, r);
      l.hold = new Set([...(l.hold ?? []), ...types]);
    }
  }

  /** Deliver the held replies to `node`, in order, and hold nothing more. */
  release(node: string): void {
    for (const r of this.replicaNames) {
      const l = this.link(node, r);
      const held = l.held ?? [];
      l.hold = undefined;
      l.held = undefined;
      for (const fn of held) this.clock.setTimeout(fn, 1);
    }
  }

  /** Forget the held replies to `node` without delivering them (they were lost). */
  discardHeld(node: string): void {
    for (const r of this.replicaNames) {
      const l = this.link(node, r);
      l.hold = undefined;
      l.held = undefined;
    }
  }

  /** Cut `node` off from every replica (true) or heal it (false). */
  cut(node: string, partitioned: boolean): void {
    for (const r of this.replicaNames) this.link(node, r).partitioned = partitioned;
  }

  /** Close every connection of `node` at once, as a reset socket would (both ends learn it). */
  dropLinks(node: string): void {
    for (const c of [...(this.conns.get(node) ?? [])]) c.close(1006, 'link dropped');
  }

  /** The next frame of message `type` from `node` is lost and its connections drop right after. */
  breakOn(node: string, type: string | undefined): void {
    if (type === undefined) this.breaks.delete(node);
    else this.breaks.set(node, type);
  }

  /** Whether a `breakOn` trap of `node` is still waiting for its frame. */
  breakPending(node: string): boolean {
    return this.breaks.has(node);
  }

  /** Drop every frame from the replicas to `node` (true) or deliver them again (false). */
  dropReplies(node: string, on: boolean, replicas: string[] = this.replicaNames): void {
    for (const r of replicas) this.link(node, r).dropReplies = on;
  }

  /** The transport a node's agent connects with: the network, keeping track of the node's connections. */
  private nodeTransport(node: string): Transport {
    const t = this.net.as(node);
    let set = this.conns.get(node);
    if (!set) this.conns.set(node, (set = new Set()));
    const open = set;
    return {
      listen: (o) => t.listen(o),
      connect: async (url, o) => {
        const c = await t.connect(url, o);
        open.add(c);
        c.onClose(() => open.delete(c));
        return c;
      },
    };
  }

  /** The node's simulated disk (created empty on first use). */
  disk(node: string): SimDisk {
    let d = this.disks.get(node);
    if (!d) this.disks.set(node, (d = new SimDisk()));
    return d;
  }

  fault(kind: string, detail: string): void {
    this.faults.set(kind, (this.faults.get(kind) ?? 0) + 1);
    this.history.add({ kind: 'fault', fault: kind, detail });
  }

  // ---- Parts ----

  async startReplica(i: number): Promise<void> {
    const name = this.replicaNames[i]!;
    const inner = this.opts.makeStore ? this.opts.makeStore(this.state) : new MemoryStore(this.state);
    this.stores[i] = inner;
    const r = new StorageReplica({
      id: name,
      store: observedStore(inner, name, this.history),
      transport: this.opts.replicaTransport ? this.opts.replicaTransport(this.net) : this.net,
      secret: SECRET,
      env: this.env,
      holdMs: this.opts.holdMs,
      leaseMs: this.timing.leaseMs,
      renewIntervalMs: this.timing.renewMs,
      heartbeatIntervalMs: this.timing.heartbeatIntervalMs,
      probeIntervalMs: 50,
    });
    await r.start();
    this.replicas[i] = r;
  }

  /** Start a node agent; `order` lists the replica indexes it tries, first to last (default: all, in order). */
  startAgent(node: string, order?: number[]): NodeAgent {
    let kept = this.opts.keptOnDisk ? undefined : this.kept.get(node);
    if (!kept) {
      // On disk, every start reads the file back, as a restarted agent process would.
      kept = this.opts.keptOnDisk ? new FileKeptIds(KEPT_DIR, node, this.disk(node)) : new MemoryKeptIds();
      this.kept.set(node, kept);
    }
    const agent = new NodeAgent({
      id: node,
      replicas: (order ?? this.replicaNames.map((_, i) => i)).map((i) => `mem://${this.replicaNames[i]}`),
      transport: this.nodeTransport(node),
      secret: SECRET,
      kept,
      env: this.env,
      backoffBaseMs: this.timing.backoffMs,
      backoffMaxMs: this.timing.backoffMaxMs,
      unavailableFailoverMs: this.timing.failoverMs,
      connectTimeoutMs: 300,
    });
    this.agents.set(node, agent);
    agent.start().catch(() => undefined);
    return agent;
  }

  // ---- Workload ----

  sleep(ms: number): Promise<void> {
    return new Promise((r) => this.clock.setTimeout(r, ms));
  }

  /**
   * Start an application process on a node: it opens its target and writes self-verifying records,
   * or, with `mode: 'read'`, opens it for reading and reads it.
   */
  spawn(app: string, node: string, target: string, opts: { requestId?: string; once?: boolean; mode?: 'read' } = {}): Proc {
    const agent = this.agents.get(node);
    if (!agent) throw new Error(`${node} has no agent`);
    const application = new Application(agent, { name: app, pauseTimeoutMs: this.opts.pauseTimeoutMs, env: this.env });
    const proc: Proc = { id: `${node}/${app}#${++this.incarnation}`, app, node, target, application, handle: undefined, crashed: false, stopped: false, k: 0 };
    this.procs.push(proc);
    void this.runProc(proc, opts);
    return proc;
  }

  crashProc(p: Proc): void {
    if (p.crashed) return;
    p.crashed = true;
    p.application.crash();
    this.history.add({ kind: 'crash', proc: p.id });
  }

  private live(p: Proc): boolean {
    return !p.crashed && !p.stopped && !this.stopping;
  }

  private async call<T>(p: Proc, op: 'open' | 'write' | 'read' | 'close', extra: { offset?: number; bytes?: string; length?: number }, run: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; code: string }> {
    const id = ++this.opId;
    const requestId = p.handle?.requestId;
    this.history.add({ kind: 'invoke', id, proc: p.id, op, target: p.target, ...(requestId ? { requestId } : {}), ...extra });
    try {
      const value = await run();
      if (p.crashed) return { ok: false, code: 'CRASHED' };
      const rid = p.handle?.requestId ?? requestId ?? '';
      const bytes = value instanceof Uint8Array ? { bytes: hex(value) } : {};
      this.history.add({ kind: 'ok', id, proc: p.id, op, target: p.target, requestId: rid, ...bytes });
      return { ok: true, value };
    } catch (err) {
      const code = err instanceof SafeResumeError ? err.code : 'INTERNAL';
      if (!p.crashed) this.history.add({ kind: 'fail', id, proc: p.id, op, target: p.target, ...(requestId ? { requestId } : {}), code });
      return { ok: false, code };
    }
  }

  private async open(p: Proc, requestId?: string, mode?: 'read'): Promise<boolean> {
    for (let attempt = 0; this.live(p); attempt++) {
      const r = await this.call(p, 'open', {}, () => p.application.open(p.target, { ...(requestId ? { requestId } : {}), ...(mode ? { mode } : {}) }));
      if (r.ok) {
        const h = r.value;
        p.handle = h;
        h.on('state', (to) => {
          if (!p.crashed) this.history.add({ kind: 'state', proc: p.id, target: p.target, requestId: h.requestId, to, ...(to === 'invalidated' && h.reason ? { reason: h.reason } : {}) });
        });
        return true;
      }
      requestId = undefined; // a refused reclaim is not retried: the application reloads
      if (r.code !== 'LOCKED' && r.code !== 'UNAVAILABLE' && r.code !== 'MODIFIED' && r.code !== 'CLOSED') return false;
      await this.sleep(this.between(50, 200));
    }
    return false;
  }

  private async runProc(p: Proc, opts: { requestId?: string; once?: boolean; mode?: 'read' }): Promise<void> {
    const [lo, hi] = this.opts.thinkMs ?? [10, 80];
    if (!(await this.open(p, opts.requestId, opts.mode))) return;
    while (this.live(p)) {
      const h = p.handle!;
      if (h.state === 'invalidated' || h.state === 'closed') {
        // The application knows to reload: it opens the target afresh.
        await this.sleep(this.between(lo, hi));
        if (!(await this.open(p, undefined, opts.mode))) return;
        continue;
      }
      if (opts.mode === 'read') {
        // A reader: one slot at a time, waiting through pauses like a writer does.
        const off = this.between(0, SLOTS - 1) * SLOT_BYTES;
        await this.call(p, 'read', { offset: off, length: SLOT_BYTES }, () => h.read(off, SLOT_BYTES));
        await this.sleep(this.between(lo, hi));
        continue;
      }
      // A burst of 1-4 pipelined writes: several in flight at once, as a real application has.
      const burst = opts.once ? 1 : this.between(1, 4);
      const writes: Array<Promise<unknown>> = [];
      for (let b = 0; b < burst; b++) {
        p.k++;
        const record = `${p.id}:${p.k}|`.padEnd(SLOT_BYTES, '.').slice(0, SLOT_BYTES);
        const offset = (p.k % SLOTS) * SLOT_BYTES;
        writes.push(this.call(p, 'write', { offset, bytes: record }, () => h.write(offset, new TextEncoder().encode(record))));
      }
      await Promise.all(writes);
      if (!this.live(p)) break;
      if (this.random() < 0.3) {
        const off = this.between(0, SLOTS - 1) * SLOT_BYTES;
        await this.call(p, 'read', { offset: off, length: SLOT_BYTES }, () => h.read(off, SLOT_BYTES));
      }
      if (opts.once) {
        await this.call(p, 'close', {}, () => h.close());
        p.stopped = true;
        return;
      }
      await this.sleep(this.between(lo, hi));
    }
  }

  /** Let the world run for `ms` of simulated time, every timer and message in order. */
  async runFor(ms: number): Promise<void> {
    // What the caller just did may still be in promise jobs (a node agent sends at the end of the turn).
    await quiesce();
    const until = this.clock.now() + ms;
    for (;;) {
      const due = this.clock.nextDue();
      if (due === undefined || due > until) break;
      this.clock.advanceTo(due);
      await quiesce();
    }
    this.clock.advanceTo(until);
    await quiesce();
  }

  /** Record every target's final bytes, read through the memory store over the shared state. */
  recordFinal(): void {
    for (const { target, data } of new MemoryStore(this.state).targets()) this.history.add({ kind: 'final', target, bytes: hex(data) });
  }

  async shutdown(): Promise<void> {
    for (const a of this.agents.values()) a?.crash();
    for (const r of this.replicas) await r?.stop();
  }
}
