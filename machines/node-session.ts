/**
 * The node agent's session with the storage: connect, watch liveness, fail over, and drive the
 * resumes of paused handles. Pure: the agent provides the `connect` actor (socket + handshake), the
 * actions (pause/resume handles, ping, drop the connection) and the clock; backoff jitter comes
 * from the agent's seeded random through the `backoff` delay.
 */
import { assign, fromPromise, setup } from 'xstate';
import { AGENT_PROBE_INTERVALS } from '../transport/messages.js';

/**
 * The one backoff: the first retry goes straight on (to the next replica), then exponential from
 * `baseMs`, capped at `maxMs`, scaled by a jitter in [0.5, 1) from `random` (seeded in simulation).
 */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, random: number): number {
  if (attempt <= 1) return 0;
  return Math.round(Math.min(maxMs, baseMs * 2 ** Math.min(20, attempt - 2)) * (0.5 + random / 2));
}

export interface SessionInput {
  replicas: string[];
  /** Until the first `welcome`; then the replica's interval, which the agent adopts. */
  heartbeatIntervalMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  /** A replica whose store stays unavailable this long is abandoned for another. */
  unavailableFailoverMs: number;
}

export interface SessionContext extends SessionInput {
  /** Index in `replicas` of the replica being tried or used. */
  index: number;
  /** Failed attempts since the last successful connection. */
  attempt: number;
  session: string | undefined;
  replica: string | undefined;
  lastError: string | undefined;
}

export interface Connected {
  session: string;
  replica: string;
  heartbeatIntervalMs: number;
  /** False if the replica's store was away when it welcomed us: nothing is resumed until it is back. */
  available: boolean;
}

const adopt = assign<SessionContext, { type: string; output: Connected }, undefined, SessionEvent, never>({
  session: ({ event }) => event.output.session,
  replica: ({ event }) => event.output.replica,
  heartbeatIntervalMs: ({ event }) => event.output.heartbeatIntervalMs,
  attempt: 0,
  lastError: undefined,
});

export type SessionEvent =
  | { type: 'SOCKET_CLOSED'; reason?: string }
  | { type: 'HEARD' }
  | { type: 'STORAGE_UNAVAILABLE' }
  | { type: 'STORAGE_AVAILABLE' }
  | { type: 'STOP' };

export const nodeSessionMachine = setup({
  types: {
    input: {} as SessionInput,
    context: {} as SessionContext,
    events: {} as SessionEvent,
  },
  actors: {
    /** Open a connection to `url`, authenticate, resolve with the session. Provided by the agent. */
    connect: fromPromise<Connected, { url: string }>(async () => {
      throw new Error('connect is provided by the node agent');
    }),
  },
  actions: {
    sendPing: () => {},
    /** Tell every handle of the node that storage is gone (application handles -> paused). */
    pauseHandles: () => {},
    /** Send one batched resume for every paused handle. */
    resumeHandles: () => {},
    dropConnection: () => {},
    nextReplica: assign({
      index: ({ context }) => (context.index + 1) % context.replicas.length,
      attempt: ({ context }) => context.attempt + 1,
      session: undefined,
      replica: undefined,
    }),
  },
  delays: {
    heartbeatInterval: ({ context }) => context.heartbeatIntervalMs,
    heartbeatTimeout: ({ context }) => context.heartbeatIntervalMs * AGENT_PROBE_INTERVALS,
    unavailableFailover: ({ context }) => context.unavailableFailoverMs,
    /** The agent provides the same function with its seeded jitter. */
    backoff: ({ context }) => backoffDelay(context.attempt, context.backoffBaseMs, context.backoffMaxMs, 1),
  },
}).createMachine({
  id: 'session',
  context: ({ input }) => ({
    ...input,
    index: 0,
    attempt: 0,
    session: undefined,
    replica: undefined,
    lastError: undefined,
  }),
  initial: 'connecting',
  on: {
    STOP: { target: '.stopped' },
  },
  states: {
    connecting: {
      invoke: {
        src: 'connect',
        input: ({ context }) => ({ url: context.replicas[context.index] ?? '' }),
        onDone: [
          // Welcomed by a replica whose store is away: wait in `unavailable` (and fail over after a
          // while) instead of sending resumes it can only refuse.
          {
            guard: ({ event }) => !event.output.available,
            target: '#session.connected.storage.unavailable',
            actions: adopt,
          },
          { target: 'connected', actions: adopt },
        ],
        onError: {
          target: 'failed',
          actions: assign({
            lastError: ({ event }) => (event.error instanceof Error ? event.error.message : String(event.error)),
          }),
        },
      },
    },
    connected: {
      type: 'parallel',
      on: {
        SOCKET_CLOSED: {
          target: 'failed',
          actions: assign({ lastError: ({ event }) => event.reason ?? 'connection closed' }),
        },
      },
      states: {
        liveness: {
          initial: 'alive',
          states: {
            alive: {
              after: { heartbeatInterval: 'probing' },
            },
            probing: {
              entry: 'sendPing',
              on: { HEARD: 'alive' },
              after: {
                heartbeatTimeout: {
                  target: '#session.failed',
                  actions: assign({ lastError: 'heartbeat timeout' }),
                },
              },
            },
          },
        },
        storage: {
          initial: 'available',
          states: {
            available: {
              entry: 'resumeHandles',
              on: { STORAGE_UNAVAILABLE: 'unavailable' },
            },
            unavailable: {
              entry: 'pauseHandles',
              on: { STORAGE_AVAILABLE: 'available' },
              after: {
                unavailableFailover: {
                  target: '#session.failed',
                  actions: assign({ lastError: 'storage unavailable too long' }),
                },
              },
            },
          },
        },
      },
    },
    failed: {
      entry: ['dropConnection', 'pauseHandles', 'nextReplica'],
      always: 'reconnecting',
    },
    reconnecting: {
      after: { backoff: 'connecting' },
    },
    stopped: {
      type: 'final',
      entry: 'dropConnection',
    },
  },
});
