/**
 * The simulated world: the same replicas, node agents and applications as the real cluster, on the
 * in-memory network turned into a seeded faulty one, the in-memory store, and a simulated clock.
 * One seed decides every fault and every delay, so a seed replays a run exactly.
 */
import { pino } from 'pino';
import { Application } from '../actors/application.js';
import { seededIds, seededRandom, type Env } from '../actors/env.js';
import { FileKeptIds, MemoryKeptIds, type KeptDisk } from '../actors/kept.js';
import { NodeAgent } from '../actors/node-agent.js';
import { StorageReplica } from '../actors/replica.js';
import type { TxStore } from '../store/base.js';
import { MemoryStore } from '../store/memory.js';
import { MemoryNetwork, type Delivery } from '../transport/memory.js';
import type { Connection, Transport } from '../transport/types.js';
import { Checker } from './checker.js';
import { ProcClock, quiesce, SimClock } from './clock.js';
import { SimDisk } from './disk.js';
import { newLeaseState, SimStore, type SimStoreFaults } from './store.js';
import { hex, observedStore, Recorder } from './history.js';
import { Workload } from './workload.js';
import type { Proc, SpawnOptions } from './procs.js';
import { KEPT_DIR, TIMING, type MemoryState, type StoreContext, type WorldOptions } from './world-options.js';

export { KEPT_DIR, TIMING, type MemoryState, type StoreContext, type WorldOptions } from './world-options.js';

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

const SECRET = 'simulation-secret-simulation-secret';
export { SLOT_BYTES, type Proc } from './procs.js';

export class World {
  readonly clock = new SimClock();
  readonly timing: typeof TIMING;
  readonly random: () => number;
  readonly history: Recorder;
  /** Checks every event as it is recorded, so a run can stop at its first violation. */
  readonly checker: Checker;
  readonly env: Env;
  readonly net: MemoryNetwork;
  readonly state: MemoryState = { records: new Map(), tombstones: new Map(), targets: new Map() };
  /** The database's busy and I/O faults, which every replica's store sees at once. */
  readonly dbFaults: SimStoreFaults = { busy: false, io: false, unavailable: false };
  /** The leases of the lease model (`leases`), which every replica's store shares, as etcd's. */
  readonly leases = newLeaseState();
  readonly replicas: Array<StorageReplica | undefined> = [];
  readonly stores: TxStore[] = [];
  readonly agents = new Map<string, NodeAgent | undefined>();
  readonly kept = new Map<string, MemoryKeptIds>();
  /** Each node's disk, with `keptOnDisk`. */
  readonly disks = new Map<string, SimDisk>();
  readonly workload = new Workload(this);
  /** Each host's wall-clock skew from simulated time, in ms (a replica's or a node's; 0 if absent). */
  readonly skews = new Map<string, number>();
  /** The clock of each process's current incarnation (a killed process's clock fires nothing). */
  readonly procClocks = new Map<string, ProcClock>();
  /** Per node: replies whose arrival kills the node's agent before it handles them (see `crashOnReply`). */
  private readonly crashTraps = new Map<string, { types: Set<string>; fire: () => void }>();
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
  stopping = false;
  /** Every fault has healed: applications slow down while their handles settle (see Workload). */
  calm = false;
  /** Simulated time skipped by clock jumps. */
  jumpedMs = 0;

  constructor(readonly opts: WorldOptions) {
    this.random = seededRandom(opts.seed);
    this.timing = { ...TIMING, ...opts.timing };
    this.checker = new Checker({ holdMs: opts.holdMs, renewMs: this.timing.renewMs });
    this.history = new Recorder(
      () => this.clock.now(),
      (e) => this.checker.observe(e),
    );
    this.env = {
      clock: this.clock,
      random: this.random,
      newId: seededIds(this.random),
      log: pino({ level: 'silent' }),
      inspect: opts.inspect,
    };
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
      const trap = d.from === replica && d.type !== undefined ? this.crashTraps.get(node) : undefined;
      if (trap?.types.has(d.type!)) {
        // The store decided and the replica answered, but the agent dies before it handles the answer.
        this.crashTraps.delete(node);
        trap.fire();
        return;
      }
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
    if (!d) this.disks.set(node, (d = new SimDisk({ tear: (n) => this.between(0, n) })));
    return d;
  }

  /**
   * An environment on the clock of `host` (a replica or a node): its monotonic clock and timers, its
   * host's skewed wall clock (ProcClock.wall), and, for the process `incarnation` of a replica or
   * node agent, timers that die with it.
   */
  envOf(host: string, incarnation = true): Env {
    const clock = new ProcClock(this.clock, () => this.skews.get(host) ?? 0);
    if (incarnation) this.procClocks.set(host, clock);
    return { ...this.env, clock };
  }

  /** Step the wall clock of `host` by `ms` (forward or back), as an operator or NTP would. */
  stepClock(host: string, ms: number): void {
    this.skews.set(host, (this.skews.get(host) ?? 0) + ms);
  }

  /**
   * Kill replica `i` like a host losing power: it answers nothing, closes nothing (its peers learn
   * from silence), renews nothing, and its uncommitted store work is lost.
   */
  killReplica(i: number): boolean {
    const name = this.replicaNames[i]!;
    if (!this.replicas[i]) return false;
    this.replicas[i] = undefined;
    this.procClocks.get(name)?.kill();
    this.net.kill(`mem://${name}`);
    const store = this.stores[i] as TxStore & { crash?: () => void };
    store.crash?.();
    return true;
  }

  /**
   * Kill the node agent of `node` and its applications (their promises never settle); with
   * `powerLoss`, the node's disk keeps only what was fsynced (and maybe a torn part of the rest).
   * Returns the processes that died, for a restart to bring back.
   */
  crashAgent(node: string, powerLoss: boolean): Proc[] {
    const agent = this.agents.get(node);
    if (!agent) return [];
    this.crashTraps.delete(node);
    this.procClocks.get(node)?.kill();
    // A node that loses power closes nothing: the replicas learn it from silence.
    const links = powerLoss ? this.replicaNames.map((r) => this.link(node, r)) : [];
    const cut = links.map((l) => l.partitioned);
    for (const l of links) l.partitioned = true;
    agent.crash();
    links.forEach((l, i) => (l.partitioned = cut[i]!));
    this.agents.set(node, undefined);
    if (powerLoss && this.opts.keptOnDisk) this.disk(node).powerLoss();
    const procs = this.procs.filter((p) => p.node === node && !p.crashed && !p.stopped);
    for (const p of procs) this.crashProc(p);
    return procs;
  }

  /** The next reply of one of `types` from any replica to `node` is never handled: `fire` runs instead (it kills the agent). */
  crashOnReply(node: string, types: string[], fire: () => void): void {
    this.crashTraps.set(node, { types: new Set(types), fire });
  }

  /** Forget every reply trap that has not fired (every fault ends). */
  disarmCrashTraps(): void {
    this.crashTraps.clear();
  }

  fault(kind: string, detail: string): void {
    this.faults.set(kind, (this.faults.get(kind) ?? 0) + 1);
    this.history.add({ kind: 'fault', fault: kind, detail });
  }

  // ---- Parts ----

  async startReplica(i: number): Promise<void> {
    const name = this.replicaNames[i]!;
    const env = this.envOf(name);
    const ctx: StoreContext = {
      clock: this.clock,
      replicaClock: (env.clock as ProcClock).wallClock,
      random: this.random,
      leases: this.leases,
      renewMs: this.timing.renewMs,
    };
    const inner = this.opts.makeStore
      ? this.opts.makeStore(this.state, ctx)
      : this.opts.store === 'sim'
        ? new SimStore(this.state, {
            clock: this.clock,
            random: this.random,
            faults: this.dbFaults,
            ...(this.opts.leases ? { leases: { state: this.leases, renewMs: this.timing.renewMs } } : {}),
          })
        : new MemoryStore(this.state, () => this.clock.now());
    this.stores[i] = inner;
    const r = new StorageReplica({
      id: name,
      store: observedStore(inner, name, this.history, 'after-commit'),
      transport: this.opts.replicaTransport ? this.opts.replicaTransport(this.net) : this.net,
      secret: SECRET,
      env,
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
      const make = this.opts.makeKept ?? ((dir: string, id: string, disk: KeptDisk) => new FileKeptIds(dir, id, disk));
      kept = this.opts.keptOnDisk ? make(KEPT_DIR, node, this.disk(node)) : new MemoryKeptIds();
      this.kept.set(node, kept);
    }
    const agent = new NodeAgent({
      id: node,
      replicas: (order ?? this.replicaNames.map((_, i) => i)).map((i) => `mem://${this.replicaNames[i]}`),
      transport: this.nodeTransport(node),
      secret: SECRET,
      kept,
      env: this.envOf(node),
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

  /** An application process on `node`, on the node's clock. */
  newApplication(agent: NodeAgent, name: string, node: string): Application {
    return new Application(agent, { name, pauseTimeoutMs: this.opts.pauseTimeoutMs, env: this.envOf(node, false) });
  }

  /** Start an application process on a node (see Workload). */
  spawn(app: string, node: string, target: string, opts: SpawnOptions = {}): Proc {
    return this.workload.spawn(app, node, target, opts);
  }

  crashProc(p: Proc): void {
    this.workload.crash(p);
  }

  get procs(): Proc[] {
    return this.workload.procs;
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
    for (const { target, data } of new MemoryStore(this.state).targets())
      this.history.add({ kind: 'final', target, bytes: hex(data) });
  }

  async shutdown(): Promise<void> {
    for (const a of this.agents.values()) a?.crash();
    for (const r of this.replicas) await r?.stop();
  }
}
