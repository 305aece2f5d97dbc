/**
 * Messages between the launcher and its child processes (over Node's IPC channel), validated on
 * arrival like every other message crossing a process boundary.
 */
import { z } from 'zod';

/** The first message to a child: its configuration (validated by the child against its role's schema). */
export const ChildConfig = z.object({ type: z.literal('config'), config: z.record(z.string(), z.unknown()) });
export type ChildConfig = z.infer<typeof ChildConfig>;

export const ChildCommand = z.discriminatedUnion('type', [
  z.object({ type: z.literal('dismount') }),
  z.object({ type: z.literal('mount') }),
  z.object({ type: z.literal('shutdown') }),
  z.object({ type: z.literal('stop-workload') }),
  z.object({ type: z.literal('watch'), on: z.boolean() }),
  z.object({ type: z.literal('release'), app: z.string() }),
  z.object({ type: z.literal('host'), app: z.string(), target: z.string(), requestId: z.string().optional() }),
]);
export type ChildCommand = z.infer<typeof ChildCommand>;

const nullable = <T extends z.ZodTypeAny>(t: T) => t.nullable();

export const HandleStatus = z.object({
  app: z.string(),
  target: z.string(),
  requestId: nullable(z.string()),
  state: z.string(),
  reason: nullable(z.string()),
  acked: z.number(),
  verified: z.number(),
  failed: z.number(),
  lastError: nullable(z.string()),
  /** How long the handle has been in its state (ms). */
  inStateMs: z.number().optional(),
  /** Paused or resuming: how long until the pause timeout invalidates it (ms). */
  pauseLeftMs: nullable(z.number()).optional(),
  /** Writes acknowledged per second over the last few seconds. */
  writesPerS: z.number().optional(),
  /** Denied MODIFIED: the byte ranges another writer changed, as a line (`0-4095, ... (2 ranges)`). */
  changed: z.string().max(4096).optional(),
});
export type HandleStatus = z.infer<typeof HandleStatus>;

export const ChildReport = z.union([
  z.object({ type: z.literal('ready') }),
  /** It could not start (its store cannot be opened, ...): why, sent just before it exits. */
  z.object({
    type: z.literal('failed'),
    error: z.string().max(4096),
    /** It could not connect to any replica in time (the error names each one's cause). */ connect: z
      .boolean()
      .optional(),
  }),
  z.object({
    type: z.literal('status'),
    role: z.literal('replica'),
    id: z.string(),
    url: z.string(),
    dismounted: z.boolean(),
    sessions: z.number(),
    /** While dismounted by a store error: the error. */
    storeError: z.string().max(4096).optional(),
    /** Its live sessions (bounded: the first 1,000). */
    sessionList: z
      .array(z.object({ id: z.string(), node: z.string(), silentMs: z.number() }))
      .max(1000)
      .optional(),
    stats: z.record(z.string(), z.number()),
    /** Where its /metrics and /healthz are served, if they are. */
    metrics: z.string().optional(),
  }),
  z.object({
    type: z.literal('status'),
    role: z.literal('node'),
    id: z.string(),
    state: z.string(),
    replica: nullable(z.string()),
    /** While not connected: its last failed attempt to reach a replica, and why (`ECONNREFUSED from ws://...: ...`). */
    cause: z.string().max(1024).optional(),
    handles: z.array(HandleStatus),
    metrics: z.string().optional(),
    /** The node's block export: its URL and the connections open on it (a handle each). */
    nbd: z
      .object({
        url: z.string(),
        tls: nullable(z.string()).optional(),
        connections: z.array(
          z.object({
            target: z.string(),
            principal: z.string().optional(),
            state: z.string(),
            reason: nullable(z.string()),
            requests: z.number(),
          }),
        ),
      })
      .optional(),
  }),
  /** A node's handles' changes of state since its last report, as they happened (its clock). */
  z.object({
    type: z.literal('transitions'),
    events: z
      .array(
        z.object({
          at: z.number(),
          app: z.string(),
          target: z.string(),
          requestId: z.string(),
          state: z.string(),
          reason: nullable(z.string()),
          /** Denied MODIFIED: the byte ranges another writer changed, as a line. */
          changed: z.string().max(4096).optional(),
        }),
      )
      .max(1000),
  }),
  z.object({ type: z.literal('history'), events: z.array(z.unknown()) }),
  z.object({
    type: z.literal('released'),
    app: z.string(),
    target: z.string().optional(),
    requestId: z.string().optional(),
    error: z.string().optional(),
  }),
  z.object({ type: z.literal('workload-stopped') }),
]);
export type ChildReport = z.infer<typeof ChildReport>;
