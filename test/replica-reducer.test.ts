/**
 * The replica steps its handles with `stepReplicaHandle`, not with actors of `replicaHandleMachine`:
 * it runs the machine's config compiled into a table (machines/compile.ts), its actions carried out
 * by name on plain records. Here that runtime is held to XState's own interpreter of the same
 * machine: on every path @xstate/graph generates from the machine, and on random event sequences,
 * the step function and XState's pure `transition()` reach the same state, session and reason, and
 * agree on which events do anything.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { initialTransition, transition, type EventObject, type SnapshotFrom } from 'xstate';
import {
  HOLD_PERIOD_ENDED,
  isFinalReplicaHandleState,
  replicaHandleInitialState,
  replicaHandleMachine,
  stepReplicaHandle,
  type ReplicaHandleData,
  type ReplicaHandleStepEvent,
} from '../machines/replica-handle.js';
import { generatePaths, stateKey } from './graph/paths.js';

type Snap = SnapshotFrom<typeof replicaHandleMachine>;

const EVENTS: ReplicaHandleStepEvent[] = [
  { type: 'SESSION_LOST' },
  { type: 'STORAGE_UNAVAILABLE' },
  { type: 'RESUME', session: 's2' },
  { type: 'GRANTED' },
  { type: 'DENIED', reason: 'MODIFIED' },
  { type: 'DENIED', reason: 'SUPERSEDED' },
  { type: 'REVOKED', reason: 'SUPERSEDED' },
  { type: 'REVOKED', reason: 'MODIFIED' },
  { type: 'CLOSE' },
  { type: HOLD_PERIOD_ENDED },
];

const input = (resume: boolean) => ({
  target: 't',
  requestId: 'r'.repeat(21),
  mode: 'write' as const,
  session: 's1',
  holdMs: 300,
  resume,
});

/** Run one event sequence through both, comparing after every event. */
function conform(resume: boolean, events: readonly EventObject[]): string[] {
  let [snap] = initialTransition(replicaHandleMachine, input(resume)) as [Snap, unknown];
  const h: ReplicaHandleData = { state: replicaHandleInitialState(resume), session: 's1', reason: undefined };
  const states = [h.state as string];
  expect(stateKey(snap.value)).toBe(stateKey(h.state));
  for (const event of events) {
    // XState's types leave out the delayed event the machine itself schedules; the step takes it by name.
    const xEvent = event as Parameters<typeof snap.can>[0];
    const enabled = snap.status === 'active' && snap.can(xEvent);
    const took = stepReplicaHandle(h, event as ReplicaHandleStepEvent);
    [snap] = transition(replicaHandleMachine, snap, xEvent) as [Snap, unknown];
    const at = `${resume ? 'resume' : 'open'}: ${states.join(' ')} -${event.type}->`;
    expect(took, `${at} whether the event does anything`).toBe(enabled);
    expect(h.state, `${at} state`).toBe(snap.value);
    expect(h.session, `${at} session`).toBe(snap.context.session);
    expect(h.reason, `${at} reason`).toBe(snap.context.reason);
    expect(isFinalReplicaHandleState(h.state), `${at} final`).toBe(snap.status === 'done');
    states.push(h.state);
  }
  return states;
}

describe('stepReplicaHandle conforms to replicaHandleMachine', () => {
  const paths = [false, true].flatMap((resume) =>
    generatePaths(replicaHandleMachine, input(resume), EVENTS).map((p) => ({ p, resume })),
  );

  it.each(paths.map((x) => [`${x.resume ? 'resume' : 'open'}: ${x.p.name}`, x] as const))('%s', (_, { p, resume }) => {
    const states = conform(
      resume,
      p.steps.map((s) => s.event),
    );
    // And both follow the path the graph traversal found.
    expect(states.map((s) => stateKey(s))).toEqual([p.initial, ...p.steps.map((s) => s.state)]);
  });

  it('the paths reach every state of the machine but the transient `starting`', () => {
    const reached = new Set(paths.flatMap(({ p }) => [p.initial, ...p.steps.map((s) => s.state)]));
    const all = Object.keys(replicaHandleMachine.root.states).filter((s) => s !== 'starting');
    expect([...reached].sort()).toEqual(all.map((s) => stateKey(s)).sort());
  });

  it('random event sequences, enabled or not, keep both in the same state', () => {
    fc.assert(
      fc.property(fc.boolean(), fc.array(fc.constantFrom(...EVENTS), { maxLength: 12 }), (resume, events) => {
        conform(resume, events);
      }),
      { numRuns: 500 },
    );
  });
});
