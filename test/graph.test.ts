/**
 * Paths generated from every machine in machines/ (@xstate/graph: shortest paths, simple paths, and
 * one path per transition), each driven through the real actor wiring in the simulated world: every
 * machine event is mapped to the operation or fault that causes it, and the real actor must pass
 * through the states of the path, in order. A coverage test then requires that every state and
 * transition of every machine was taken by a real actor.
 */
import { describe, expect, it } from 'vitest';
import type { EventObject } from 'xstate';
import { Application, type Handle } from '../actors/application.js';
import type { NodeAgent } from '../actors/node-agent.js';
import { appHandleMachine } from '../machines/app-handle.js';
import { nodeSessionMachine } from '../machines/node-session.js';
import { replicaHandleMachine } from '../machines/replica-handle.js';
import { World } from '../sim/world.js';
import { definedTransitions, generatePaths, inOrder, Recorder, stateKey, type MachinePath } from './graph/paths.js';

const T = 'vm1.disk';
const PAUSE_TIMEOUT_MS = 2500;
const HOLD_MS = 300;
const recorders: Recorder[] = [];
const enc = (s: string) => new TextEncoder().encode(s);
const ignore = () => undefined;

/** A world for one path: 2 replicas, node-1 (the subject's node) and node-2 (for other writers). */
async function makeWorld(rec: Recorder, seed: number): Promise<{ world: World; n1: NodeAgent; n2: NodeAgent }> {
  const world = new World({
    seed,
    replicas: 2,
    nodes: 2,
    appsPerNode: 0,
    holdMs: HOLD_MS,
    pauseTimeoutMs: PAUSE_TIMEOUT_MS,
    inspect: rec.inspect,
  });
  for (let i = 0; i < 2; i++) await world.startReplica(i);
  const n1 = world.startAgent('node-1');
  const n2 = world.startAgent('node-2');
  await world.runFor(50);
  return { world, n1, n2 };
}

/** Run until `done()` holds (or a simulated limit passes). */
async function until(world: World, done: () => boolean, limitMs = 5000): Promise<void> {
  for (let t = 0; t < limitMs && !done(); t += 10) await world.runFor(10);
}

/** The value of a promise that must have settled (the world only moves inside runFor). */
async function settled<T>(world: World, p: Promise<T>, limitMs = 5000): Promise<T> {
  let done = false;
  const q = p.finally(() => (done = true));
  await until(world, () => done, limitMs);
  if (!done) throw new Error('operation still pending');
  return q;
}

/** Another writer takes the target from node-2 once the subject's lock has lapsed, writes, closes. */
async function foreignWrite(world: World, n2: NodeAgent): Promise<void> {
  const y = new Application(n2, { name: `intruder-${world.clock.now()}`, env: world.env });
  for (let i = 0; i < 100; i++) {
    const r = await settled(
      world,
      y.open(T).then(
        (h) => h,
        (e: { code?: string }) => e.code ?? 'error',
      ),
    );
    if (typeof r !== 'string') {
      await settled(world, r.write(0, enc('foreign')));
      await settled(world, r.close());
      return;
    }
    await world.runFor(100);
  }
  throw new Error('the foreign writer never got the target');
}

/** The next event of the path that is not an I/O call. */
const nextMeaningful = (rest: EventObject[]) => rest.find((e) => e.type !== 'IO')?.type;

function check(rec: Recorder, refs: object[], path: MachinePath): void {
  const { states, events } = rec.trace(refs);
  const want = [path.initial, ...path.steps.map((s) => s.state)];
  const st = inOrder(states, want);
  expect(st.ok, `states ${states.join(' ')} should pass through ${want.join(' ')}`).toBe(true);
  const ev = inOrder(
    events,
    path.steps.map((s) => s.event.type),
  );
  expect(ev.ok, `events ${events.join(' ')} should include ${path.steps.map((s) => s.event.type).join(' ')}`).toBe(
    true,
  );
}

// ---- The application's handle ----

const appEvents: EventObject[] = [
  { type: 'OPENED' },
  { type: 'OPEN_FAILED', code: 'LOCKED' } as EventObject,
  { type: 'IO' },
  { type: 'PAUSED' },
  { type: 'RESUMING' },
  { type: 'GRANTED' },
  { type: 'DENIED', reason: 'MODIFIED' } as EventObject,
  { type: 'REVOKED', reason: 'SUPERSEDED' } as EventObject,
  { type: 'CLOSE' },
  { type: 'CLOSED' },
  { type: 'PAUSE_TIMEOUT' },
];

async function driveAppPath(path: MachinePath, onFailure: 'pause' | 'error', seed: number): Promise<void> {
  const rec = new Recorder();
  recorders.push(rec);
  const { world, n1, n2 } = await makeWorld(rec, seed);
  const app = new Application(n1, { name: 'x', env: world.env, pauseTimeoutMs: PAUSE_TIMEOUT_MS });
  let x: Handle | undefined;
  const subject = () => rec.actors.filter((a) => a.machine === 'handle' && a.tag === 'x').map((a) => a.ref);
  const state = () => (x ? x.state : undefined);
  const events = path.steps.map((s) => s.event);
  if (events.length === 0) {
    // The initial state: a handle being opened.
    rec.tag = 'x';
    app.open(T, { onFailure }).catch(ignore);
    rec.tag = undefined;
  }
  for (let i = 0; i < events.length; i++) {
    const type = events[i]!.type;
    const rest = events.slice(i + 1);
    switch (type) {
      case 'OPENED':
        rec.tag = 'x';
        x = await settled(world, app.open(T, { onFailure }));
        rec.tag = undefined;
        break;
      case 'OPEN_FAILED': {
        const y = await settled(world, new Application(n2, { name: 'y', env: world.env }).open(T));
        rec.tag = 'x';
        const failed = await settled(
          world,
          app.open(T, { onFailure }).then(
            () => 'opened',
            (e: { code?: string }) => e.code,
          ),
        );
        rec.tag = undefined;
        expect(failed).toBe('LOCKED');
        await settled(world, y.close());
        break;
      }
      case 'IO':
        x!.write(0, enc('io')).catch(ignore);
        await world.runFor(20);
        break;
      case 'PAUSED':
        if (state() === 'resuming') world.discardHeld('node-1');
        world.cut('node-1', true);
        await until(world, () => state() === 'paused');
        break;
      case 'RESUMING':
        if (nextMeaningful(rest) === 'DENIED') {
          await world.runFor(3 * 100 + HOLD_MS + 200);
          await foreignWrite(world, n2);
        }
        world.hold('node-1', ['resumed']);
        world.cut('node-1', false);
        await until(world, () => state() === 'resuming');
        break;
      case 'GRANTED':
      case 'DENIED':
      case 'CLOSED':
        world.release('node-1');
        await until(
          world,
          () => state() === (type === 'GRANTED' ? 'active' : type === 'DENIED' ? 'invalidated' : 'closed'),
        );
        break;
      case 'REVOKED': {
        // The application moves: another node opens the target with its requestId.
        const moved = new Application(n2, { name: 'x', env: world.env });
        await settled(world, moved.open(T, { requestId: x!.requestId }));
        await until(world, () => state() === 'invalidated');
        break;
      }
      case 'PAUSE_TIMEOUT':
        await world.runFor(PAUSE_TIMEOUT_MS + 100);
        break;
      case 'CLOSE':
        // To stay in `closing` (where the path goes on), the storage's answer is held back.
        if (path.steps[i]!.state === stateKey('closing')) world.hold('node-1', ['closed']);
        x!.close().catch(ignore);
        await world.runFor(20);
        break;
      default:
        throw new Error(`no driver for ${type}`);
    }
  }
  check(rec, subject(), path);
  await world.shutdown();
}

// ---- The node agent's session ----

const sessionEvents: EventObject[] = [
  {
    type: 'xstate.done.actor.0.session.connecting',
    output: { session: 's', replica: 'r', heartbeatIntervalMs: 100, available: true },
  } as EventObject,
  {
    type: 'xstate.done.actor.0.session.connecting',
    output: { session: 's', replica: 'r', heartbeatIntervalMs: 100, available: false },
  } as EventObject,
  { type: 'xstate.error.actor.0.session.connecting', error: new Error('refused') } as EventObject,
  { type: 'SOCKET_CLOSED' },
  { type: 'HEARD' },
  { type: 'STORAGE_UNAVAILABLE' },
  { type: 'STORAGE_AVAILABLE' },
  { type: 'STOP' },
  { type: 'xstate.after.heartbeatInterval.session.connected.liveness.alive' },
  { type: 'xstate.after.heartbeatTimeout.session.connected.liveness.probing' },
  { type: 'xstate.after.unavailableFailover.session.connected.storage.unavailable' },
  { type: 'xstate.after.backoff.session.reconnecting' },
];

async function driveSessionPath(path: MachinePath, seed: number): Promise<void> {
  const rec = new Recorder();
  recorders.push(rec);
  const world = new World({
    seed,
    replicas: 2,
    nodes: 1,
    appsPerNode: 0,
    holdMs: HOLD_MS,
    pauseTimeoutMs: PAUSE_TIMEOUT_MS,
    inspect: rec.inspect,
  });
  const events = path.steps.map((s) => s.event.type);
  // A path that starts with a failed connection starts with no replica up.
  const startDown = events[0]?.startsWith('xstate.error');
  if (!startDown) for (let i = 0; i < 2; i++) await world.startReplica(i);
  rec.tag = 'subject';
  const agent = world.startAgent('node-1');
  rec.tag = undefined;
  const value = () => stateKey(agent.machine.getSnapshot().value);
  const serving = () => world.replicas.findIndex((r) => r?.id === agent.replica);
  for (let i = 0; i < events.length; i++) {
    const type = events[i]!;
    if (type.startsWith('xstate.done.actor')) {
      for (let r = 0; r < 2; r++) if (!world.replicas[r]) await world.startReplica(r);
      // Welcomed while the store is away: every replica is dismounted before the agent gets there.
      const away = (path.steps[i]!.event as { output?: { available?: boolean } }).output?.available === false;
      if (away) for (const r of world.replicas) r?.dismount();
      await until(world, () =>
        agent.machine.getSnapshot().matches(away ? { connected: { storage: 'unavailable' } } : 'connected'),
      );
    } else if (type.startsWith('xstate.error.actor')) {
      await until(world, () => agent.machine.getSnapshot().matches('reconnecting'));
    } else if (type === 'SOCKET_CLOSED') {
      world.release('node-1');
      const r = world.replicas[serving()]!;
      world.replicas[serving()] = undefined;
      await r.stop();
      await until(world, () => !agent.machine.getSnapshot().matches('connected'));
    } else if (type.startsWith('xstate.after.heartbeatInterval')) {
      world.hold('node-1', ['pong']);
      await until(world, () => agent.machine.getSnapshot().matches({ connected: { liveness: 'probing' } }));
    } else if (type === 'HEARD') {
      world.release('node-1');
      await until(world, () => agent.machine.getSnapshot().matches({ connected: { liveness: 'alive' } }));
    } else if (type.startsWith('xstate.after.heartbeatTimeout')) {
      await until(world, () => !agent.machine.getSnapshot().matches('connected'));
      world.discardHeld('node-1');
    } else if (type === 'STORAGE_UNAVAILABLE') {
      world.replicas[serving()]!.dismount();
      await until(world, () => agent.machine.getSnapshot().matches({ connected: { storage: 'unavailable' } }));
    } else if (type === 'STORAGE_AVAILABLE') {
      world.replicas[serving()]!.mount();
      await until(world, () => agent.machine.getSnapshot().matches({ connected: { storage: 'available' } }));
    } else if (type.startsWith('xstate.after.unavailableFailover')) {
      world.release('node-1'); // heartbeats answered: only the dismount can end this session
      await until(world, () => !agent.machine.getSnapshot().matches('connected'));
    } else if (type.startsWith('xstate.after.backoff')) {
      await until(world, () => value() !== stateKey('reconnecting'));
    } else if (type === 'STOP') {
      agent.crash();
    } else throw new Error(`no driver for ${type}`);
  }
  check(
    rec,
    rec.actors.filter((a) => a.tag === 'subject' && a.machine === 'session').map((a) => a.ref),
    path,
  );
  await world.shutdown();
}

// ---- The replica's view of a handle ----
// A replica keeps its handles as records stepped by stepReplicaHandle, not as actors; actors/pure-inspect.ts
// reports them with the inspection events an actor of replicaHandleMachine would emit, which the recorder follows.

const replicaEvents: EventObject[] = [
  { type: 'SESSION_LOST' },
  { type: 'STORAGE_UNAVAILABLE' },
  { type: 'RESUME', session: 's' } as EventObject,
  { type: 'GRANTED' },
  { type: 'DENIED', reason: 'MODIFIED' } as EventObject,
  { type: 'REVOKED', reason: 'SUPERSEDED' } as EventObject,
  { type: 'CLOSE' },
  { type: 'xstate.after.holdPeriod.replicaHandle.paused' },
];

async function driveReplicaPath(path: MachinePath, resume: boolean, seed: number): Promise<void> {
  const rec = new Recorder();
  recorders.push(rec);
  const { world, n1, n2 } = await makeWorld(rec, seed);
  const x = await settled(world, new Application(n1, { name: 'x', env: world.env, pauseTimeoutMs: 60_000 }).open(T));
  const events = path.steps.map((s) => s.event.type);
  const serving = () => world.replicas.findIndex((r) => r?.id === n1.replica);
  /** How the subject last paused, so RESUME brings it back the same way. */
  let pausedBy: 'session' | 'store' | undefined;
  let dismounted = -1;
  if (resume) {
    // The handle comes to a replica that never had it: its session there starts by resuming.
    if (nextMeaningful(path.steps.map((s) => s.event)) === 'DENIED') {
      world.cut('node-1', true);
      await world.runFor(3 * 100 + 300 + HOLD_MS + 200);
      await foreignWrite(world, n2);
      world.cut('node-1', false);
    } else {
      const i = serving();
      const r = world.replicas[i]!;
      world.replicas[i] = undefined;
      await r.stop();
    }
    await until(world, () => x.state !== 'active' && x.state !== 'paused' && x.state !== 'resuming', 500);
    await until(world, () => x.state === 'active' || x.state === 'invalidated');
  }
  for (let i = 0; i < events.length; i++) {
    const type = events[i]!;
    const rest = path.steps.slice(i + 1).map((s) => s.event);
    if (type === 'SESSION_LOST') {
      // Cut node-1 off the other replica too, so it comes back to this one within the hold period.
      const here = serving();
      world.cut('node-1', true);
      await world.runFor(3 * 100 + 100);
      pausedBy = 'session';
      dismounted = here;
    } else if (type === 'STORAGE_UNAVAILABLE') {
      dismounted = serving();
      world.replicas[dismounted]!.dismount();
      await world.runFor(20);
      pausedBy = 'store';
    } else if (type === 'RESUME') {
      if (nextMeaningful(rest) === 'DENIED') {
        // Within the hold period only the same application can take the target: it moves to
        // node-3 (on the other replica), so node-1's resume comes back superseded.
        if (pausedBy === 'store') world.link('node-1', world.replicaNames[1 - dismounted]!).partitioned = true;
        const n3 = world.startAgent('node-3', [1 - dismounted]);
        await until(world, () => n3.state === 'connected');
        await settled(world, new Application(n3, { name: 'x', env: world.env }).open(T, { requestId: x.requestId }));
      }
      if (pausedBy === 'store') world.replicas[dismounted]!.mount();
      else world.link('node-1', world.replicaNames[dismounted]!).partitioned = false; // only this replica is back
      await until(world, () => x.state === 'active' || x.state === 'invalidated');
      world.cut('node-1', false);
    } else if (type === 'GRANTED' || type === 'DENIED') {
      await world.runFor(20); // the store answered within the resume itself
    } else if (type === 'REVOKED') {
      await settled(world, new Application(n2, { name: 'x', env: world.env }).open(T, { requestId: x.requestId }));
      await world.runFor(300);
    } else if (type === 'CLOSE') {
      await settled(world, x.close());
    } else if (type.startsWith('xstate.after.holdPeriod')) {
      await world.runFor(HOLD_MS + 50);
    } else throw new Error(`no driver for ${type}`);
  }
  const refs = rec.actors.filter(
    (a) =>
      a.machine === 'replicaHandle' &&
      (a.ref as { getSnapshot(): { context: { requestId: string } } }).getSnapshot().context.requestId === x.requestId,
  );
  check(
    rec,
    refs.map((a) => a.ref),
    path,
  );
  await world.shutdown();
}

// ---- The tests ----

const RID = 'r'.repeat(21);
const appPaths = (['pause', 'error'] as const).flatMap((onFailure) =>
  generatePaths(
    appHandleMachine,
    { target: T, mode: 'write', requestId: RID, onFailure, pauseTimeoutMs: PAUSE_TIMEOUT_MS },
    appEvents,
  ).map((p) => ({ p, onFailure })),
);
const sessionPaths = generatePaths(
  nodeSessionMachine,
  { replicas: ['a', 'b'], heartbeatIntervalMs: 100, backoffBaseMs: 20, backoffMaxMs: 400, unavailableFailoverMs: 1500 },
  sessionEvents,
  60,
);
const replicaPaths = [false, true].flatMap((resume) =>
  generatePaths(
    replicaHandleMachine,
    { target: T, requestId: RID, mode: 'write', session: 's', holdMs: HOLD_MS, resume },
    replicaEvents,
  ).map((p) => ({ p, resume })),
);

describe('generated paths of machines/app-handle, driven through Application + NodeAgent + replicas', () => {
  it.each(appPaths.map((x, i) => [`${x.onFailure}: ${x.p.name}`, x, i] as const))('%s', async (_, x, i) => {
    await driveAppPath(x.p, x.onFailure, 1000 + i);
  });
});

describe('generated paths of machines/node-session, driven through a NodeAgent', () => {
  it.each(sessionPaths.map((p, i) => [p.name, p, i] as const))('%s', async (_, p, i) => {
    await driveSessionPath(p, 2000 + i);
  });
});

describe('generated paths of machines/replica-handle, driven through a StorageReplica', () => {
  it.each(replicaPaths.map((x, i) => [`${x.resume ? 'resume' : 'open'}: ${x.p.name}`, x, i] as const))(
    '%s',
    async (_, x, i) => {
      await driveReplicaPath(x.p, x.resume, 3000 + i);
    },
  );
});

/** The state node ids a state value names: 'paused' -> m.paused; {a: {b: 'c'}} -> m.a, m.a.b, m.a.b.c. */
function stateIds(prefix: string, value: unknown): string[] {
  if (typeof value === 'string') return [prefix, `${prefix}.${value}`];
  const out = [prefix];
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) out.push(...stateIds(`${prefix}.${k}`, v));
  return out;
}

describe('coverage', () => {
  it('every transition of every machine was taken by a real actor', () => {
    for (const machine of [appHandleMachine, nodeSessionMachine, replicaHandleMachine]) {
      const taken = new Set<string>();
      for (const r of recorders) for (const k of r.transitions.get(machine.id) ?? []) taken.add(k);
      const missing = [...definedTransitions(machine)].filter((k) => !taken.has(k));
      expect(missing, `${machine.id}: transitions never taken`).toEqual([]);
      expect(taken.size).toBeGreaterThan(0);
    }
  });

  it('every state of every machine was reached by a real actor', () => {
    for (const machine of [appHandleMachine, nodeSessionMachine, replicaHandleMachine]) {
      const reached = new Set<string>();
      for (const r of recorders) {
        // States an actor rested in (from its snapshots) ...
        for (const a of r.actors)
          if (a.machine === machine.id)
            for (const v of r.states.get(a.ref) ?? [])
              for (const id of stateIds(machine.id, JSON.parse(v))) reached.add(id);
        // ... and states it only passed through (the sources and targets of its transitions).
        for (const k of r.transitions.get(machine.id) ?? []) {
          const [source, rest] = k.split(' --');
          reached.add(source!);
          for (const id of rest!.split('--> ')[1]!.replace(/\[.*$/, '').split(',')) reached.add(id);
        }
      }
      const all: string[] = [];
      const walk = (n: { id: string; states: Record<string, unknown> }) => {
        all.push(n.id);
        for (const c of Object.values(n.states)) walk(c as typeof n);
      };
      walk(machine.root);
      expect(
        all.filter((id) => !reached.has(id)),
        `${machine.id}: states never entered`,
      ).toEqual([]);
    }
  });
});
