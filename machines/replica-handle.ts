/**
 * A handle as the storage replica sees it. The store holds the truth (the record); this machine
 * tracks the handle's life on one replica so it can be watched and so the replica knows which
 * handles a session holds.
 *
 * `replicaHandleMachine` is the drawn definition (the inspector, the generated path tests).
 * A replica holds many thousands of handles, so it does not run one actor per handle: it keeps a
 * plain record per handle and steps it with `stepReplicaHandle`, the same transitions as plain
 * data (a test holds the two to the same states on every generated path).
 */
import { assign, setup } from 'xstate';
import type { InvalidationReason } from '../errors.js';

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
        REVOKED: { target: 'invalidated', actions: { type: 'setReason', params: ({ event }) => ({ reason: event.reason }) } },
        CLOSE: 'closed',
      },
    },
    paused: {
      on: {
        RESUME: { target: 'resuming', actions: assign({ session: ({ event }) => event.session }) },
      },
      // The lock lapses after the hold period; the record stays in the store for a later resume.
      after: { holdPeriod: 'released' },
    },
    // The store answers a resume in one step, so the replica passes through `resuming` at once.
    resuming: {
      on: {
        GRANTED: 'active',
        DENIED: { target: 'invalidated', actions: { type: 'setReason', params: ({ event }) => ({ reason: event.reason }) } },
      },
    },
    invalidated: { type: 'final' },
    released: { type: 'final' },
    closed: { type: 'final' },
  },
});

// ---- The same lifecycle as a plain step function ----

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

/** The state a handle is in once created: `starting` passes at once (the machine's eventless transition). */
export function replicaHandleInitialState(resume: boolean): 'active' | 'resuming' {
  return resume ? 'resuming' : 'active';
}

export function isFinalReplicaHandleState(state: ReplicaHandleState): boolean {
  return state === 'invalidated' || state === 'released' || state === 'closed';
}

/**
 * One step of `replicaHandleMachine` on `h`, in place: returns whether a transition was taken (an
 * event the current state does not take changes nothing). It decides only; the caller does the
 * effects: arm the hold-period timer on entering `paused`, cancel it on leaving.
 */
export function stepReplicaHandle(h: ReplicaHandleData, event: ReplicaHandleStepEvent): boolean {
  switch (h.state) {
    case 'active':
      switch (event.type) {
        case 'SESSION_LOST':
        case 'STORAGE_UNAVAILABLE':
          h.state = 'paused';
          return true;
        case 'REVOKED':
          h.state = 'invalidated';
          h.reason = event.reason;
          return true;
        case 'CLOSE':
          h.state = 'closed';
          return true;
        default:
          return false;
      }
    case 'paused':
      if (event.type === 'RESUME') {
        h.state = 'resuming';
        h.session = event.session;
        return true;
      }
      if (event.type === HOLD_PERIOD_ENDED) {
        h.state = 'released';
        return true;
      }
      return false;
    case 'resuming':
      if (event.type === 'GRANTED') {
        h.state = 'active';
        return true;
      }
      if (event.type === 'DENIED') {
        h.state = 'invalidated';
        h.reason = event.reason;
        return true;
      }
      return false;
    default:
      // `starting` is never rested in; final states take nothing.
      return false;
  }
}
