/**
 * A replica's handles are plain records, not actors, yet the inspector must still draw them as
 * replica-handle machines: actors/pure-inspect.ts makes the inspection events an actor would. Here
 * those events go through the real inspection path of a process (processInspector, which converts
 * them with @statelyai/inspect's createInspector and sends them over a WebSocket), and what arrives
 * must name the machine, carry its definition and follow the handle's states.
 */
import { WebSocketServer } from 'ws';
import { describe, expect, it } from 'vitest';
import { createActor, createMachine, type AnyStateMachine, type EventObject, type InspectionEvent } from 'xstate';
import { pureInspector, type PureSnapshot } from '../actors/pure-inspect.js';
import { StorageReplica } from '../actors/replica.js';
import { processInspector } from '../runtime/inspect.js';
import { replicaHandleMachine } from '../machines/replica-handle.js';
import { MemoryStore } from '../store/memory.js';
import type { Message } from '../transport/messages.js';
import { WebSocketTransport } from '../transport/ws.js';
import { transitionKey } from './graph/paths.js';
import { loginAs, waitFor } from './helpers.js';

const SECRET = 'inspect-secret-inspect-secret-inspect';
const RID = 'i'.repeat(21);

const snap = (value: string, status: PureSnapshot['status'] = 'active'): PureSnapshot => ({
  value,
  status,
  context: { target: 't', requestId: RID },
});

describe('pure-inspect', () => {
  it('without an observer there is no inspector (nothing is built or kept)', () => {
    expect(pureInspector(undefined)).toBeUndefined();
  });

  it('reports a record as an actor of its machine: registration, events, the transitions of the definition, snapshots, stop', () => {
    const seen: InspectionEvent[] = [];
    const insp = pureInspector<object>((e) => seen.push(e))!;
    const h = {};
    insp.register(h, replicaHandleMachine, undefined, snap('resuming'));
    insp.update(h, { type: 'GRANTED' }, snap('active'));
    insp.update(h, { type: 'GRANTED' }, snap('active'));
    insp.update(h, { type: 'SESSION_LOST' }, snap('paused'));
    expect(insp.size).toBe(1);
    insp.stop(h);
    expect(insp.size).toBe(0);

    expect(seen.map((e) => e.type)).toEqual([
      '@xstate.actor',
      '@xstate.event',
      '@xstate.microstep',
      '@xstate.snapshot',
      '@xstate.event',
      '@xstate.microstep',
      '@xstate.snapshot',
      '@xstate.event',
      '@xstate.microstep',
      '@xstate.snapshot',
      '@xstate.event',
      '@xstate.microstep',
      '@xstate.snapshot',
      '@xstate.event',
      '@xstate.snapshot',
    ]);
    const ref = seen[0]!.actorRef as unknown as { logic: unknown; sessionId: string; getSnapshot(): PureSnapshot };
    expect(ref.logic).toBe(replicaHandleMachine);
    expect(seen.every((e) => e.actorRef === seen[0]!.actorRef && e.rootId === ref.sessionId)).toBe(true);
    // The transitions are the machine's own definitions, as an actor's microsteps carry them.
    const steps = seen
      .filter((e) => e.type === '@xstate.microstep')
      .map((e) => (e as { _transitions: Parameters<typeof transitionKey>[0][] })._transitions.map(transitionKey));
    expect(steps).toEqual([
      ['replicaHandle.starting --always--> replicaHandle.resuming[guard]'],
      ['replicaHandle.resuming --GRANTED--> replicaHandle.active'],
      [],
      ['replicaHandle.active --SESSION_LOST--> replicaHandle.paused'],
    ]);
    expect(
      seen
        .filter((e) => e.type === '@xstate.snapshot')
        .map((e) => (e as unknown as { snapshot: PureSnapshot }).snapshot.value),
    ).toEqual(['resuming', 'active', 'active', 'paused', 'paused']);
    expect(ref.getSnapshot().status).toBe('stopped');
  });

  it('a record that ends in a final state is done; stopping it afterwards reports nothing more', () => {
    const seen: InspectionEvent[] = [];
    const insp = pureInspector<object>((e) => seen.push(e))!;
    const h = {};
    insp.register(h, replicaHandleMachine, undefined, snap('active'));
    insp.update(h, { type: 'CLOSE' }, snap('closed', 'done'));
    const n = seen.length;
    insp.stop(h);
    expect(seen.length).toBe(n);
    expect(insp.size).toBe(0);
    expect((seen.at(-1) as unknown as { snapshot: PureSnapshot }).snapshot).toMatchObject({
      value: 'closed',
      status: 'done',
    });
  });
});

/** The transitions (as keys) of each microstep an inspection stream reports, and each snapshot's value. */
function story(events: InspectionEvent[]): { steps: string[][]; values: string[] } {
  return {
    steps: events
      .filter((e) => e.type === '@xstate.microstep')
      .map((e) => (e as { _transitions: Parameters<typeof transitionKey>[0][] })._transitions.map(transitionKey))
      .filter((ks) => ks.length > 0),
    values: events
      .filter((e) => e.type === '@xstate.snapshot')
      .map((e) => JSON.stringify((e as unknown as { snapshot: { value: unknown } }).snapshot.value)),
  };
}

/** What a real actor of `machine` reports for `events`, and what pure-inspect reports for a record following the same snapshots. */
function bothStories(machine: AnyStateMachine, events: EventObject[], input?: unknown) {
  const all: InspectionEvent[] = [];
  const actor = createActor(machine, { input, inspect: (e) => void all.push(e) });
  actor.start();
  const pure: InspectionEvent[] = [];
  const insp = pureInspector<object>((e) => pure.push(e))!;
  const h = {};
  const snapOf = () => {
    const s = actor.getSnapshot();
    return { value: s.value, context: s.context, status: s.status === 'done' ? 'done' : 'active' } as PureSnapshot;
  };
  insp.register(h, machine, undefined, snapOf());
  for (const e of events) {
    actor.send(e);
    insp.update(h, e, snapOf());
  }
  actor.stop();
  insp.stop(h);
  return { real: story(all.filter((e) => e.actorRef === actor)), pure: story(pure) };
}

describe('pure-inspect reports what an actor of the same machine reports', () => {
  it('replicaHandle: the transitions and states of a resumed handle that pauses, resumes and is closed', () => {
    const events: EventObject[] = [
      { type: 'GRANTED' },
      { type: 'SESSION_LOST' },
      { type: 'RESUME', session: 's2' } as EventObject,
      { type: 'GRANTED' },
      { type: 'CLOSE' },
    ];
    const { real, pure } = bothStories(replicaHandleMachine, events, {
      target: 't',
      requestId: RID,
      mode: 'write',
      session: 's1',
      holdMs: 100,
      resume: true,
    });
    expect(pure).toEqual(real);
    expect(pure.steps.length).toBe(6);
  });

  it('any machine: nested and parallel states, eventless transitions after an event', () => {
    const machine = createMachine({
      id: 'n',
      initial: 'off',
      states: {
        off: { on: { GO: 'on' } },
        on: {
          type: 'parallel',
          on: { STOP: 'off' },
          states: {
            a: { initial: 'x', states: { x: { on: { FLIP: 'y' } }, y: { always: 'z' }, z: {} } },
            b: { initial: 'p', states: { p: { on: { NEXT: 'q' } }, q: {} } },
          },
        },
      },
    });
    const { real, pure } = bothStories(machine, [
      { type: 'GO' },
      { type: 'FLIP' },
      { type: 'NEXT' },
      { type: 'NOTHING' },
      { type: 'STOP' },
    ]);
    expect(pure).toEqual(real);
    expect(pure.steps).toEqual([
      ['n.off --GO--> n.on'],
      ['n.on.a.x --FLIP--> n.on.a.y'],
      ['n.on.a.y --always--> n.on.a.z'],
      ['n.on.b.p --NEXT--> n.on.b.q'],
      ['n.on --STOP--> n.off'],
    ]);
  });
});

describe("a replica's handles through the process inspector", () => {
  it('arrive as replicaHandle actors with the machine definition, and follow the handle from active to paused', async () => {
    // The launcher's end of the inspection stream: JSON arrays of @statelyai/inspect events.
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((r) => server.once('listening', r));
    const frames: Array<Record<string, unknown>> = [];
    server.on('connection', (ws) =>
      ws.on('message', (d) => frames.push(...(JSON.parse((d as Buffer).toString()) as Array<Record<string, unknown>>))),
    );
    const { port } = server.address() as { port: number };
    const insp = processInspector(`ws://127.0.0.1:${port}`);
    insp.watch(true);
    const replica = await new StorageReplica({
      id: 'replica-1',
      store: new MemoryStore(),
      transport: new WebSocketTransport(),
      secret: SECRET,
      holdMs: 60_000,
      env: { inspect: insp.inspect },
    }).start();
    try {
      const conn = await new WebSocketTransport().connect(replica.url);
      const got: Message[] = [];
      const login = loginAs(SECRET, 'node-1');
      conn.onFrame((f) => {
        const auth = f.ok ? login.answer(f.msg) : undefined;
        if (auth) conn.send(auth);
        else if (f.ok) got.push(f.msg);
      });
      conn.send(login.hello);
      await waitFor('the welcome', () => got.some((m) => m.type === 'welcome'));
      conn.send({ type: 'open', id: 1, target: 'vm1.disk', requestId: RID, principal: 'p', mode: 'write' });
      await waitFor('the open answer', () => got.some((m) => m.type === 'opened'));
      conn.close();
      await waitFor('the handle to pause', () => replica.handles().some((h) => h.state === 'paused'));

      const states = () =>
        frames.filter((f) => f.type === '@xstate.snapshot').map((f) => (f.snapshot as { value?: unknown }).value);
      await waitFor('the paused snapshot to reach the launcher', () => states().includes('paused'));
      const actors = frames.filter((f) => f.type === '@xstate.actor' && f.name === 'replicaHandle');
      expect(actors).toHaveLength(1);
      const actor = actors[0]!;
      const definition = JSON.parse(actor.definition as string) as { id: string; states: Record<string, unknown> };
      expect(definition.id).toBe('replicaHandle');
      expect(Object.keys(definition.states)).toEqual(
        expect.arrayContaining(['active', 'paused', 'resuming', 'invalidated', 'released', 'closed']),
      );
      expect(actor.snapshot).toMatchObject({
        value: 'active',
        status: 'active',
        context: { target: 'vm1.disk', requestId: RID, mode: 'write' },
      });
      const mine = frames.filter((f) => f.sessionId === actor.sessionId && f.type === '@xstate.snapshot');
      // (The open's GRANTED reaches a handle that is already active: a snapshot, no change.)
      expect(mine.map((f) => (f.snapshot as { value: unknown }).value)).toEqual(['active', 'active', 'paused']);
      expect(mine.at(-1)!.event).toMatchObject({ type: 'SESSION_LOST' });

      // A watcher arriving later is told where every live actor is now (from its actorRef).
      insp.watch(false);
      insp.watch(true);
      await waitFor('the resync', () =>
        frames.some(
          (f) =>
            f.sessionId === actor.sessionId && (f.event as { type?: string } | undefined)?.type === 'xstate.resync',
        ),
      );
      const resync = frames.find(
        (f) => f.sessionId === actor.sessionId && (f.event as { type?: string } | undefined)?.type === 'xstate.resync',
      )!;
      expect(resync.snapshot).toMatchObject({ value: 'paused', status: 'active' });
    } finally {
      await replica.stop();
      insp.stop();
      await new Promise((r) => server.close(r));
    }
  });
});
