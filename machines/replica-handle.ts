/**
 * A handle as the storage replica sees it. The store holds the truth (the record); this machine
 * tracks the handle's life on one replica so it can be watched and so the replica knows which
 * handles a session holds.
 *
 * `replicaHandleMachine` is the one definition: the inspector draws it, and the replica runs it.
 * A replica holds many thousands of handles, so it does not run one actor per handle: it keeps a
 * plain record per handle and steps it with `stepReplicaHandle`, which looks the transition up in
 * the machine's config compiled at load (machines/compile.ts) and carries out its actions by name.
 */
import { assign, setup } from 'xstate';
import type { InvalidationReason } from '../errors.js';
import { compileMachine, pick } from './compile.js';

export interface ReplicaHandleInput {
  target: string;
  requestId: string;
  mode: 'read' | 'write';
  session: string;
  holdMs: number;
  /** A resume on a session that never held the handle starts in `resuming`. */
  resume: boolean;
}

export interface ReplicaHandleContext extends ReplicaHandleInput {
  reason: InvalidationReason | undefined;
}

export type ReplicaHandleEvent =
  | { type: 'SESSION_LOST' }
  | { type: 'STORAGE_UNAVAILABLE' }
  | { type: 'RESUME'; session: string }
  | { type: 'GRANTED' }
  | { type: 'DENIED'; reason: InvalidationReason }
  | { type: 'REVOKED'; reason: InvalidationReason }
  | { type: 'CLOSE' };

export const replicaHandleMachine = setup({
  types: {
    input: {} as ReplicaHandleInput,
    context: {} as ReplicaHandleContext,
    events: {} as ReplicaHandleEvent,
  },
  actions: {
    setReason: assign({ reason: (_, params: { reason: InvalidationReason }) => params.reason }),
    setSession: assign({ session: (_, params: { session: string }) => params.session }),
  },
  guards: {
    isResume: ({ context }) => context.resume,
  },
  delays: {
    holdPeriod: ({ context }) => context.holdMs,
  },
}).createMachine({
  id: 'replicaHandle',
  context: ({ input }) => ({ ...input, reason: undefined }),
  initial: 'starting',
  states: {
    starting: {
      always: [{ guard: 'isResume', target: 'resuming' }, { target: 'active' }],
    },
    active: {
      on: {
        SESSION_LOST: 'paused',
        STORAGE_UNAVAILABLE: 'paused',
        REVOKED: {
          target: 'invalidated',
          actions: { type: 'setReason', params: ({ event }) => ({ reason: event.reason }) },
        },
        CLOSE: 'closed',
      },
    },
    paused: {
      on: {
        RESUME: {
          target: 'resuming',
          actions: { type: 'setSession', params: ({ event }) => ({ session: event.session }) },
        },
      },
      // The lock lapses after the hold period; the record stays in the store for a later resume.
      after: { holdPeriod: 'released' },
    },
    // The store answers a resume in one step, so the replica passes through `resuming` at once.
    resuming: {
      on: {
        GRANTED: 'active',
        DENIED: {
          target: 'invalidated',
          actions: { type: 'setReason', params: ({ event }) => ({ reason: event.reason }) },
        },
      },
    },
    invalidated: { type: 'final' },
    released: { type: 'final' },
    closed: { type: 'final' },
  },
});

// ---- The machine, compiled: what the replica runs ----

export type ReplicaHandleState = 'starting' | 'active' | 'paused' | 'resuming' | 'invalidated' | 'released' | 'closed';

/** The end of the hold period, under the name XState gives the machine's delayed transition. */
export const HOLD_PERIOD_ENDED = 'xstate.after.holdPeriod.replicaHandle.paused';

export type ReplicaHandleStepEvent = ReplicaHandleEvent | { type: typeof HOLD_PERIOD_ENDED };

/** What the step reads and writes: the state and the two context fields the machine assigns. */
export interface ReplicaHandleData {
  state: ReplicaHandleState;
  session: string;
  reason: InvalidationReason | undefined;
}

/**
 * The machine's actions on plain data, by name: the context fields they assign, from the event's
 * (the params the machine gives them). The hold period (`after`) is the caller's timer: see
 * stepReplicaHandle.
 */
const ACTIONS: Record<'setReason' | 'setSession', (h: ReplicaHandleData, event: ReplicaHandleStepEvent) => void> = {
  setReason: (h, event) => {
    if (event.type === 'DENIED' || event.type === 'REVOKED') h.reason = event.reason;
  },
  setSession: (h, event) => {
    if (event.type === 'RESUME') h.session = event.session;
  },
};

/** `isResume` is the machine's one guard: it reads the handle's input, known only when it is created. */
const REPLICA_HANDLE = compileMachine(replicaHandleMachine, { guards: ['isResume'], actions: Object.keys(ACTIONS) });
// `isResume` is read only when a handle is created; a guard on any evented transition would have
// no input to decide from here, so the load fails instead of the step silently skipping it.
for (const state of REPLICA_HANDLE.states) {
  for (const [event, branches] of Object.entries(REPLICA_HANDLE.on[state])) {
    if (event !== '' && branches?.some((b) => b.guard !== undefined))
      throw new Error(`replica handle: guarded ${event} in ${state}; stepReplicaHandle evaluates no guard on events`);
  }
}
const sameStates: ReplicaHandleState extends (typeof REPLICA_HANDLE.states)[number]
  ? (typeof REPLICA_HANDLE.states)[number] extends ReplicaHandleState
    ? true
    : false
  : false = true;
void sameStates;

/** The state a handle is in once created: `starting` passes at once (the machine's eventless transition). */
export function replicaHandleInitialState(resume: boolean): 'active' | 'resuming' {
  const b = pick(REPLICA_HANDLE.on[REPLICA_HANDLE.initial][''], (guard) => guard === 'isResume' && resume);
  if (b?.target !== 'active' && b?.target !== 'resuming')
    throw new Error(`replica handle: ${REPLICA_HANDLE.initial} does not lead to active or resuming`);
  return b.target;
}

export function isFinalReplicaHandleState(state: ReplicaHandleState): boolean {
  return REPLICA_HANDLE.final.has(state);
}

/**
 * One step of `replicaHandleMachine` on `h`, in place: returns whether a transition was taken (an
 * event the current state does not take changes nothing). It decides only; the caller does the
 * effects: arm the hold-period timer on entering `paused`, cancel it on leaving.
 */
export function stepReplicaHandle(h: ReplicaHandleData, event: ReplicaHandleStepEvent): boolean {
  // `starting` is never rested in (its only transition is eventless); final states take nothing.
  // Event transitions carry no guard (checked at load), so the first branch is the one.
  const b = pick(REPLICA_HANDLE.on[h.state][event.type], () => false);
  if (!b) return false;
  for (const a of b.actions) ACTIONS[a as keyof typeof ACTIONS](h, event);
  if (b.target !== undefined) h.state = b.target;
  return true;
}
