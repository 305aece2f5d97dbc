/**
 * Model-based test: fast-check generates sequences of operations and faults, runs them on the
 * simulated world (real actors, simulated network, store and clock), and after each one compares
 * the application's handle and data with a model of what SPEC says must happen. A failure shrinks
 * to a minimal sequence; fast-check prints its seed and path, and FC_SEED / FC_PATH replay it.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Application, type Handle } from '../actors/application.js';
import { World } from '../sim/world.js';

const HOLD_MS = 300;
/** Worst case from a cut to the replicas dropping the session: 3 heartbeats plus a renewal. */
const DETECT_MS = 3 * 100 + 100;
const SLOT = 16;
/** How often the interesting outcomes happened, so the test proves it explored them. */
const seen = { resumed: 0, denied: 0, refused: 0, foreign: 0 };

interface Model {
  state: 'active' | 'paused' | 'invalidated';
  partitioned: boolean;
  /** Simulated ms since node-1 was cut off. */
  awayMs: number;
  foreignWrote: boolean;
  /** What X believes each slot holds (and what the store must hold while X owns the target). */
  data: Map<number, string>;
  pending: Array<{ slot: number; bytes: string; done: Promise<string> }>;
  writes: number;
}

interface Real {
  world: World;
  x: Handle;
  intruder: Application;
  /** Every state X's handle went through. */
  states: string[];
}

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);
const record = (tag: string, n: number) => `${tag}${n}`.padEnd(SLOT, '.');

/**
 * The value of a promise that must have settled by now. The simulated world only moves inside
 * runFor, so awaiting a promise that is still pending would wait forever: report it instead.
 */
async function now<T>(p: Promise<T>, what: string): Promise<T> {
  const pending = Symbol('pending');
  const v = await Promise.race([p, new Promise<typeof pending>((r) => setImmediate(() => r(pending)))]);
  if (v === pending) throw new Error(`${what} is still pending`);
  return v;
}

async function settle(r: Real, ms: number, m: Model): Promise<void> {
  await r.world.runFor(ms);
  if (m.partitioned) m.awayMs += ms;
}

class Write implements fc.AsyncCommand<Model, Real> {
  constructor(readonly slot: number) {}
  check = (m: Readonly<Model>) => m.state !== 'invalidated';
  async run(m: Model, r: Real): Promise<void> {
    const bytes = record('x', ++m.writes);
    const done = r.x.write(this.slot * SLOT, enc(bytes)).then(
      () => 'ok',
      (e: { code?: string }) => e.code ?? 'error',
    );
    m.pending.push({ slot: this.slot, bytes, done });
    await settle(r, 50, m);
    if (m.state === 'active') {
      expect(await now(done, 'write')).toBe('ok');
      m.pending = m.pending.filter((p) => p.done !== done);
      m.data.set(this.slot, bytes);
    }
  }
  toString = () => `Write(${this.slot})`;
}

class Read implements fc.AsyncCommand<Model, Real> {
  constructor(readonly slot: number) {}
  check = (m: Readonly<Model>) => m.state === 'active';
  async run(m: Model, r: Real): Promise<void> {
    const got = r.x.read(this.slot * SLOT, SLOT).then(dec);
    await settle(r, 50, m);
    const want = m.data.get(this.slot);
    const value = await now(got, 'read');
    if (want) expect(value).toBe(want);
  }
  toString = () => `Read(${this.slot})`;
}

class Partition implements fc.AsyncCommand<Model, Real> {
  check = (m: Readonly<Model>) => !m.partitioned && m.state === 'active';
  async run(m: Model, r: Real): Promise<void> {
    for (const rep of r.world.replicaNames) r.world.link('node-1', rep).partitioned = true;
    m.partitioned = true;
    m.awayMs = 0;
    await settle(r, 400, m);
    m.state = 'paused';
    expect(r.x.state).toBe('paused');
  }
  toString = () => 'Partition(node-1)';
}

class Advance implements fc.AsyncCommand<Model, Real> {
  constructor(readonly ms: number) {}
  check = () => true;
  async run(m: Model, r: Real): Promise<void> {
    await settle(r, this.ms, m);
    expect(r.x.state).toBe(m.state);
  }
  toString = () => `Advance(${this.ms}ms)`;
}

class ForeignWrite implements fc.AsyncCommand<Model, Real> {
  check = (m: Readonly<Model>) => m.state !== 'invalidated';
  async run(m: Model, r: Real): Promise<void> {
    const opened = r.intruder.open('vm1.disk').then(
      (h) => h,
      (e: { code?: string }) => e.code ?? 'error',
    );
    await settle(r, 50, m);
    const h = await now(opened, 'foreign open');
    const expired = m.partitioned && m.awayMs > DETECT_MS + HOLD_MS + 100;
    const live = !m.partitioned || m.awayMs < 300 + HOLD_MS;
    if (typeof h === 'string') {
      expect(h).toBe('LOCKED');
      seen.refused++;
      expect(expired).toBe(false); // a lock past its hold period must not refuse the writer
      return;
    }
    expect(live).toBe(false); // a live lock must refuse the writer
    const w = h.write(0, enc(record('y', 1))).then(() => 'ok');
    await settle(r, 50, m);
    expect(await now(w, 'foreign write')).toBe('ok');
    const closed = h.close();
    await settle(r, 20, m);
    await now(closed, 'foreign close');
    m.foreignWrote = true;
    seen.foreign++;
  }
  toString = () => 'ForeignWrite';
}

class Heal implements fc.AsyncCommand<Model, Real> {
  check = (m: Readonly<Model>) => m.partitioned;
  async run(m: Model, r: Real): Promise<void> {
    for (const rep of r.world.replicaNames) r.world.link('node-1', rep).partitioned = false;
    m.partitioned = false;
    const from = r.states.length;
    await settle(r, 1500, m);
    const went = r.states.slice(from);
    if (m.foreignWrote) {
      // S1: somebody else wrote while X was away, so X's resume is denied and its queued writes fail.
      m.state = 'invalidated';
      seen.denied++;
      expect(went).toEqual(['resuming', 'invalidated']); // never active again on changed data
      expect(r.x.state).toBe('invalidated');
      expect(r.x.reason).toBe('MODIFIED');
      for (const p of m.pending) expect(await now(p.done, 'queued write')).toBe('MODIFIED');
    } else {
      // L1 and S4: nobody else wrote, so X resumes and each queued write lands once.
      m.state = 'active';
      seen.resumed++;
      expect(went).toEqual(['resuming', 'active']);
      expect(r.x.state).toBe('active');
      for (const p of m.pending) {
        expect(await now(p.done, 'queued write')).toBe('ok');
        m.data.set(p.slot, p.bytes);
      }
    }
    m.pending = [];
  }
  toString = () => 'Heal(node-1)';
}

const commands = [
  fc.integer({ min: 0, max: 3 }).map((s) => new Write(s)),
  fc.integer({ min: 0, max: 3 }).map((s) => new Read(s)),
  fc.constant(new Partition()),
  fc.constantFrom(100, 300, 1000, 2000).map((ms) => new Advance(ms)),
  fc.constant(new ForeignWrite()),
  fc.constant(new ForeignWrite()),
  fc.constant(new Heal()),
];

async function setup(seed: number): Promise<Real> {
  const world = new World({ seed, replicas: 2, nodes: 2, appsPerNode: 0, holdMs: HOLD_MS, pauseTimeoutMs: 600_000 });
  for (let i = 0; i < 2; i++) await world.startReplica(i);
  const a1 = world.startAgent('node-1');
  const a2 = world.startAgent('node-2');
  await world.runFor(100);
  const app = new Application(a1, { name: 'x', env: world.env, pauseTimeoutMs: 600_000 });
  const opening = app.open('vm1.disk');
  await world.runFor(50);
  const x = await now(opening, 'open');
  const intruder = new Application(a2, { name: 'y', env: world.env });
  const states: string[] = [];
  x.on('state', (st) => states.push(st));
  return { world, x, intruder, states };
}

describe('model-based: operations and faults against the model of SPEC', () => {
  it('every generated sequence behaves as the model says', async () => {
    const params: fc.Parameters<[number, Iterable<fc.AsyncCommand<Model, Real>>]> = { numRuns: 150 };
    // A fixed seed keeps the suite deterministic; FC_SEED (and FC_PATH) replay or explore others.
    params.seed = process.env.FC_SEED ? Number(process.env.FC_SEED) : 20261124;
    if (process.env.FC_PATH) params.path = process.env.FC_PATH;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 1_000_000 }),
        fc.commands(commands, { maxCommands: 30 }),
        async (seed, cmds) => {
          const real = await setup(seed);
          const model: Model = {
            state: 'active',
            partitioned: false,
            awayMs: 0,
            foreignWrote: false,
            data: new Map(),
            pending: [],
            writes: 0,
          };
          try {
            await fc.asyncModelRun(() => ({ model, real }), cmds);
          } finally {
            await real.world.shutdown();
          }
        },
      ),
      params,
    );
    expect(seen.resumed).toBeGreaterThan(0);
    expect(seen.denied).toBeGreaterThan(0);
    expect(seen.refused).toBeGreaterThan(0);
    expect(seen.foreign).toBeGreaterThan(0);
  }, 300_000);
});
