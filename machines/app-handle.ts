/**
 * The application-side handle lifecycle, drawn: what the application sees. The node agent's core
 * steps this machine's transitions on plain data: core/handle.ts compiles its config at load into
 * the table `nextState` reads (machines/compile.ts). This machine is also what the inspector shows
 * and what the generated-path tests walk. Pure: the actor that runs it provides every action and
 * the clock.
 */
import { assign, cancel, enqueueActions, raise, setup } from 'xstate';
import type { InvalidationReason } from '../errors.js';

export interface AppHandleInput {
  target: string;
  mode: 'read' | 'write';
  requestId: string;
  onFailure: 'pause' | 'error';
  pauseTimeoutMs: number;
}

export interface AppHandleContext extends AppHandleInput {
  reason: InvalidationReason | undefined;
  /** Operations waiting for the handle to be active again. */
  queued: number;
}

export type AppHandleEvent =
  | { type: 'OPENED' }
  | { type: 'OPEN_FAILED'; code: string }
  | { type: 'IO' }
  | { type: 'PAUSED' }
  | { type: 'RESUMING' }
  | { type: 'GRANTED' }
  /** The resume was answered no (or the agent already knows it would be). */
  | { type: 'DENIED'; reason: InvalidationReason }
  /** The storage took the handle away while it was active (revoked, superseded, closed). */
  | { type: 'REVOKED'; reason: InvalidationReason }
  | { type: 'CLOSE' }
  | { type: 'CLOSED' }
  /** The pause timeout ran out: the handle has been away (paused or resuming) since it last was active. */
  | { type: 'PAUSE_TIMEOUT' };

const timedOut = { target: 'invalidated', actions: { type: 'setReason', params: { reason: 'TIMEOUT' } } } as const;

export const appHandleMachine = setup({
  types: {
    input: {} as AppHandleInput,
    context: {} as AppHandleContext,
    events: {} as AppHandleEvent,
  },
  actions: {
    /** Send one operation to the node agent now. */
    dispatchIo: () => {},
    /** Keep the operation until the handle is active again. */
    queueIo: assign({ queued: ({ context }) => context.queued + 1 }),
    /** Fail the operation at once: the handle is invalidated or closed. */
    rejectIo: () => {},
    /** Fail the operation at once as UNAVAILABLE: a fail-fast handle while storage is away. */
    rejectIoUnavailable: () => {},
    /** Send every queued operation, in order. */
    flushQueue: assign({ queued: 0 }),
    /** Reject every queued and in-flight operation with the handle's reason. */
    failAll: assign({ queued: 0 }),
    /** Fail-fast handles: reject what is queued and in flight as UNAVAILABLE, keep the handle. */
    failInFlight: assign({ queued: 0 }),
    notifyPaused: () => {},
    notifyResumed: () => {},
    notifyInvalidated: () => {},
    sendClose: () => {},
    setReason: assign({ reason: (_, params: { reason: InvalidationReason }) => params.reason }),
    /**
     * One timer for the whole time away from `active`: started when the handle pauses, kept across
     * paused <-> resuming, so a handle that keeps flapping still gives up after the pause timeout;
     * stopped on the ways out (granted, invalidated, closed). Not on entering `active`: a cancel
     * run there made every active handle about 150 bytes bigger (measured with 20,000 actors).
     */
    startPauseTimer: raise({ type: 'PAUSE_TIMEOUT' }, { id: 'pauseTimeout', delay: 'pauseTimeout' }),
    stopPauseTimer: cancel('pauseTimeout'),
  },
  guards: {
    failsFast: ({ context }) => context.onFailure === 'error',
  },
  delays: {
    pauseTimeout: ({ context }) => context.pauseTimeoutMs,
  },
}).createMachine({
  id: 'handle',
  context: ({ input }) => ({ ...input, reason: undefined, queued: 0 }),
  initial: 'opening',
  states: {
    opening: {
      on: {
        OPENED: 'active',
        OPEN_FAILED: 'closed',
      },
    },
    active: {
      entry: 'flushQueue',
      on: {
        IO: { actions: 'dispatchIo' },
        PAUSED: { target: 'paused', actions: 'startPauseTimer' },
        REVOKED: {
          target: 'invalidated',
          actions: { type: 'setReason', params: ({ event }) => ({ reason: event.reason }) },
        },
        CLOSE: 'closing',
      },
    },
    paused: {
      entry: [
        'notifyPaused',
        enqueueActions(({ enqueue, check }) => {
          if (check('failsFast')) enqueue('failInFlight');
        }),
      ],
      on: {
        IO: [{ guard: 'failsFast', actions: 'rejectIoUnavailable' }, { actions: 'queueIo' }],
        RESUMING: 'resuming',
        CLOSE: 'closed',
        PAUSE_TIMEOUT: timedOut,
      },
    },
    resuming: {
      on: {
        IO: [{ guard: 'failsFast', actions: 'rejectIoUnavailable' }, { actions: 'queueIo' }],
        GRANTED: { target: 'active', actions: ['stopPauseTimer', 'notifyResumed'] },
        DENIED: {
          target: 'invalidated',
          actions: { type: 'setReason', params: ({ event }) => ({ reason: event.reason }) },
        },
        PAUSED: 'paused',
        CLOSE: 'closed',
        PAUSE_TIMEOUT: timedOut,
      },
    },
    invalidated: {
      entry: ['stopPauseTimer', 'failAll', 'notifyInvalidated'],
      on: {
        IO: { actions: 'rejectIo' },
        CLOSE: 'closed',
      },
    },
    closing: {
      entry: 'sendClose',
      on: {
        IO: { actions: 'rejectIo' },
        CLOSED: 'closed',
      },
    },
    closed: {
      type: 'final',
      entry: ['stopPauseTimer', 'failAll'],
    },
  },
});
