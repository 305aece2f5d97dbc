/**
 * A handle as the storage replica sees it. The store holds the truth (the record); this machine
 * tracks the handle's life on one replica so it can be watched and so the replica knows which
 * handles a session holds.
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
  | { type: 'STORE_UNAVAILABLE' }
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
        STORE_UNAVAILABLE: 'paused',
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
