/**
 * The machines are the one source of the lifecycles: the runtimes step tables compiled from the
 * machines' configs (machines/compile.ts). Here: the runtime takes exactly the transitions the
 * drawing has (read from `machine.config`, and checked against XState's own `transition()`), refuses
 * every other one (the handle keeps its state), and a machine the compiler cannot turn into data
 * fails loudly when it is compiled instead of running as something else than what is drawn.
 */
import { describe, expect, it } from 'vitest';
import { createMachine, initialTransition, setup, transition } from 'xstate';
import { AgentCore, type Intent } from '../core/agent.js';
import {
  lifecycleTransitions,
  nextState,
  type CoreHandle,
  type HandleState,
  type LifecycleEvent,
} from '../core/handle.js';
import { appHandleMachine } from '../machines/app-handle.js';
import { compileMachine, targetTable } from '../machines/compile.js';
import {
  HOLD_PERIOD_ENDED,
  replicaHandleInitialState,
  replicaHandleMachine,
  stepReplicaHandle,
  type ReplicaHandleData,
  type ReplicaHandleState,
  type ReplicaHandleStepEvent,
} from '../machines/replica-handle.js';

/** `from --event--> to` for every transition with a target in a flat machine's config, `after` under XState's event name. */
function drawn(machine: { id: string; config: { states?: Record<string, unknown> } }): Set<string> {
  const moves = new Set<string>();
  for (const [from, node] of Object.entries(machine.config.states ?? {})) {
    const n = node as { on?: Record<string, unknown>; after?: Record<string, unknown> };
    const add = (event: string, t: unknown) => {
      for (const x of Array.isArray(t) ? t : [t]) {
        const to = typeof x === 'string' ? x : (x as { target?: string }).target;
        if (to) moves.add(`${from} --${event}--> ${to}`);
      }
    };
    for (const [event, t] of Object.entries(n.on ?? {})) add(event, t);
    for (const [delay, t] of Object.entries(n.after ?? {})) add(`xstate.after.${delay}.${machine.id}.${from}`, t);
  }
  return moves;
}

const APP_STATES = Object.keys(appHandleMachine.config.states ?? {}) as HandleState[];
const APP_EVENTS: LifecycleEvent[] = [
  'OPENED',
  'OPEN_FAILED',
  'PAUSED',
  'RESUMING',
  'GRANTED',
  'DENIED',
  'REVOKED',
  'CLOSE',
  'CLOSED',
  'PAUSE_TIMEOUT',
];

const REPLICA_STATES = (Object.keys(replicaHandleMachine.config.states ?? {}) as ReplicaHandleState[]).filter(
  (s) => s !== 'starting',
);
const REPLICA_EVENTS: ReplicaHandleStepEvent[] = [
  { type: 'SESSION_LOST' },
  { type: 'STORAGE_UNAVAILABLE' },
  { type: 'RESUME', session: 's2' },
  { type: 'GRANTED' },
  { type: 'DENIED', reason: 'MODIFIED' },
  { type: 'REVOKED', reason: 'SUPERSEDED' },
  { type: 'CLOSE' },
  { type: HOLD_PERIOD_ENDED },
];

describe('the node agent core runs the drawn handle lifecycle', () => {
  it('takes exactly the transitions machines/app-handle.ts draws, and no other', () => {
    const taken = new Set<string>();
    for (const from of APP_STATES) {
      for (const event of APP_EVENTS) {
        const to = nextState(from, event);
        if (to !== undefined) taken.add(`${from} --${event}--> ${to}`);
      }
    }
    expect(taken).toEqual(drawn(appHandleMachine));
    expect(new Set(lifecycleTransitions().map((t) => `${t.from} --${t.event}--> ${t.to}`))).toEqual(taken);
  });

  it('each transition it takes leads where XState itself takes the machine', () => {
    const events: Record<string, { type: string; [k: string]: unknown }> = {
      DENIED: { type: 'DENIED', reason: 'MODIFIED' },
      REVOKED: { type: 'REVOKED', reason: 'SUPERSEDED' },
      OPEN_FAILED: { type: 'OPEN_FAILED', code: 'LOCKED' },
    };
    const input = {
      target: 't',
      mode: 'write' as const,
      requestId: 'r'.repeat(21),
      onFailure: 'pause' as const,
      pauseTimeoutMs: 1000,
    };
    const [initial] = initialTransition(appHandleMachine, input);
    for (const t of lifecycleTransitions()) {
      const at = appHandleMachine.resolveState({ value: t.from, context: initial.context });
      const [next] = transition(appHandleMachine, at, (events[t.event] ?? { type: t.event }) as never);
      expect(`${t.from} --${t.event}--> ${String(next.value)}`).toBe(`${t.from} --${t.event}--> ${t.to}`);
    }
  });

  it('refuses a transition the machine lacks: the handle keeps its state and nobody is told it changed', () => {
    class Probe extends AgentCore {
      move(h: CoreHandle, event: LifecycleEvent): Intent[] {
        this.out = [];
        this.to(h, event);
        return this.out;
      }
    }
    const core = new Probe('node-1');
    const h = { target: 'vm1.disk', state: 'closed' } as CoreHandle;
    expect(() => core.move(h, 'OPENED')).toThrow('handle lifecycle: no OPENED from closed (vm1.disk)');
    expect(h.state).toBe('closed');
    h.state = 'paused';
    expect(() => core.move(h, 'GRANTED')).toThrow('handle lifecycle: no GRANTED from paused (vm1.disk)');
    expect(h.state).toBe('paused');
    expect(core.move(h, 'RESUMING')).toEqual([
      { kind: 'changed', h, from: 'paused', to: 'resuming', event: 'RESUMING' },
    ]);
  });
});

describe('the replica runs the drawn replica handle lifecycle', () => {
  it('takes exactly the transitions machines/replica-handle.ts draws (the hold period too), and no other', () => {
    const taken = new Set<string>();
    for (const from of REPLICA_STATES) {
      for (const event of REPLICA_EVENTS) {
        const h: ReplicaHandleData = { state: from, session: 's1', reason: undefined };
        if (stepReplicaHandle(h, event)) taken.add(`${from} --${event.type}--> ${h.state}`);
      }
    }
    expect(taken).toEqual(drawn(replicaHandleMachine));
  });

  it('refuses a transition the machine lacks: the record is left as it was', () => {
    const drawnFrom = new Set([...drawn(replicaHandleMachine)].map((t) => t.slice(0, t.indexOf('-->'))));
    let refused = 0;
    for (const from of REPLICA_STATES) {
      for (const event of REPLICA_EVENTS) {
        if (drawnFrom.has(`${from} --${event.type}`)) continue;
        const h: ReplicaHandleData = { state: from, session: 's1', reason: undefined };
        expect(stepReplicaHandle(h, event), `${from} -${event.type}->`).toBe(false);
        expect(h, `${from} -${event.type}->`).toEqual({ state: from, session: 's1', reason: undefined });
        refused++;
      }
    }
    expect(refused).toBe(REPLICA_STATES.length * REPLICA_EVENTS.length - drawnFrom.size);
    const h: ReplicaHandleData = { state: 'active', session: 's1', reason: undefined };
    expect(stepReplicaHandle(h, { type: 'GRANTED' })).toBe(false);
    expect(stepReplicaHandle(h, { type: 'RESUME', session: 's9' })).toBe(false);
    expect(h).toEqual({ state: 'active', session: 's1', reason: undefined });
  });

  it("carries out the machine's actions: a resume moves the handle to its new session, a denial or revocation records why", () => {
    const h: ReplicaHandleData = { state: 'paused', session: 's1', reason: undefined };
    expect(stepReplicaHandle(h, { type: 'RESUME', session: 's2' })).toBe(true);
    expect(h).toEqual({ state: 'resuming', session: 's2', reason: undefined });
    expect(stepReplicaHandle(h, { type: 'DENIED', reason: 'MODIFIED' })).toBe(true);
    expect(h).toEqual({ state: 'invalidated', session: 's2', reason: 'MODIFIED' });
  });

  it("starts where the machine's eventless `starting` leads: resuming for a resume, active for an open", () => {
    expect(replicaHandleInitialState(true)).toBe('resuming');
    expect(replicaHandleInitialState(false)).toBe('active');
  });
});

describe('compiling a machine the runtime cannot run as drawn fails loudly', () => {
  const flat = (states: Record<string, unknown>) => createMachine({ id: 'small', initial: 'a', states } as never);

  it('compiles a small flat machine into its table', () => {
    const m = setup({ guards: { ok: () => true }, actions: { note: () => {} } }).createMachine({
      id: 'small',
      initial: 'a',
      states: {
        a: { on: { GO: { target: 'b', actions: 'note' } } },
        b: { after: { 100: 'a' }, on: { STOP: 'c' } },
        c: { type: 'final' },
      },
    });
    const c = compileMachine(m, { actions: ['note'] });
    expect(c.on.a.GO).toEqual([{ guard: undefined, target: 'b', actions: ['note'] }]);
    expect(c.on.b['xstate.after.100.small.b']).toEqual([{ guard: undefined, target: 'a', actions: [] }]);
    expect([...c.final]).toEqual(['c']);
    expect(targetTable(c)).toEqual({ a: { GO: 'b' }, b: { 'xstate.after.100.small.b': 'a', STOP: 'c' }, c: {} });
  });

  it('a guard given as a function', () => {
    const m = flat({ a: { on: { GO: { guard: () => true, target: 'b' } } }, b: {} });
    expect(() => compileMachine(m)).toThrow('machine small: cannot compile an unnamed guard (a function) at a --GO-->');
  });

  it('a named guard or action the runtime does not say it carries out', () => {
    const m = flat({ a: { on: { GO: { guard: 'ready', target: 'b', actions: 'tell' } } }, b: {} });
    expect(() => compileMachine(m)).toThrow(
      'machine small: cannot compile guard "ready" at a --GO-->: the runtime does not carry it out',
    );
    expect(() => compileMachine(m, { guards: ['ready'] })).toThrow(
      'machine small: cannot compile action "tell" at a --GO-->: the runtime does not carry it out',
    );
  });

  it('a guard that chooses the target, for a runtime that looks up targets only', () => {
    const m = flat({ a: { on: { GO: [{ guard: 'ready', target: 'b' }, { target: 'a' }] } }, b: {} });
    const c = compileMachine(m, { guards: ['ready'] });
    expect(() => targetTable(c)).toThrow(
      'machine small: cannot compile a --GO--> into a plain table: a guard chooses where it leads',
    );
  });

  it('nested, parallel and invoking states, and targets by id', () => {
    expect(() => compileMachine(flat({ a: { initial: 'x', states: { x: {} } } }))).toThrow(
      'machine small: cannot compile "initial" of state a (flat machines only)',
    );
    expect(() => compileMachine(flat({ a: { type: 'parallel', states: {} } }))).toThrow(
      'cannot compile "states" of state a',
    );
    expect(() => compileMachine(flat({ a: { invoke: { src: 'x' } } }))).toThrow('cannot compile "invoke" of state a');
    expect(() => compileMachine(flat({ a: { on: { GO: '#small.b' } }, b: {} }))).toThrow(
      'cannot compile target "#small.b" of a --GO-->',
    );
  });

  it('the real machines, without what their runtime says it carries out', () => {
    expect(() => compileMachine(replicaHandleMachine)).toThrow(
      'guard "isResume" at starting (always): the runtime does not carry it out',
    );
    expect(() => compileMachine(appHandleMachine)).toThrow('cannot compile action "dispatchIo" at active --IO-->');
  });
});
