/**
 * The one message schema. Every frame that crosses a process boundary is decoded by codec.ts and
 * validated here; nothing above the transport sees an unvalidated message.
 */
import { z } from 'zod';
import { MAX_CHANGED_RANGES } from '../errors.js';

export const PROTOCOL_VERSION = 3;
export const MAX_IO_BYTES = 1024 * 1024;

const target = z.string().min(1).max(1024);
const requestId = z.string().regex(/^[A-Za-z0-9_-]{21,64}$/, 'requestId must be 21-64 URL-safe characters');
/** Node and principal names: what credentials are issued to (actors/auth.ts). */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;
const name = z.string().regex(NAME_PATTERN, 'names are 1-128 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)');
const principal = name;
/** A fresh random value of one handshake (at least 96 bits). */
const nonce = z.string().regex(/^[A-Za-z0-9_-]{16,64}$/, 'nonce must be 16-64 URL-safe characters');
/** An HMAC-SHA256 in base64url. */
const proof = z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'proof must be 43 base64url characters');
const corr = z.number().int().nonnegative();
const u53 = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const mode = z.enum(['read', 'write']);
/** The bytes of one read or write: at most MAX_IO_BYTES, checked where every frame is validated. */
const ioBytes = z.custom<Uint8Array>(
  (v) => v instanceof Uint8Array && v.length <= MAX_IO_BYTES,
  `expected at most ${MAX_IO_BYTES} bytes`,
);
const errorCode = z.string().min(1).max(64);
const reason = z.enum(['MODIFIED', 'SUPERSEDED', 'TIMEOUT', 'CLOSED_BY_STORAGE', 'FORBIDDEN']);
/** One handle instance of a requestId: fresh per open or takeover, kept by the node with the requestId. */
const instance = z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, 'instance must be 8-64 URL-safe characters');

export const ResumeItem = z.object({
  target,
  requestId,
  principal,
  mode,
  /**
   * The target version the handle last saw: a read handle is granted only at it; a resume denied
   * MODIFIED lists the byte ranges changed since it (`changed` in the answer).
   */
  version: u53.optional(),
  /**
   * Write handles: the handle instance asking (see `instance` on open). Without `takeover` the resume
   * is granted only if the record still names this instance; with it, the instance takes the record
   * over from any other instance of the same requestId (an application that moved nodes).
   */
  instance: instance.optional(),
  takeover: z.boolean().optional(),
  /**
   * Write handles: the hand-over counter of this request. A node numbers every open and resume it
   * sends with a larger one than before (across its restarts); the store moves a record only forward,
   * so a late copy from a session the node has left cannot take it back.
   */
  epoch: u53.optional(),
});

export const ResumeResult = z.object({
  target,
  requestId,
  granted: z.boolean(),
  reason: reason.optional(),
  code: errorCode.optional(),
  /**
   * Granted: the last write seq applied for this requestId. Denied: the last seq this instance had
   * applied before it lost the target, when the store still knows it (its tombstone); absent when the
   * evidence is gone, so the agent reports OUTCOME_UNKNOWN for writes whose fate it cannot tell.
   */
  lastSeq: u53.optional(),
  version: u53,
  /** Granted: the target's fixed size, absent if it has none. */
  size: u53.optional(),
  /**
   * Denied as late: a newer request of the same instance holds the record, at this hand-over counter.
   * A node that sees it on the session it uses lost count of its hand-overs: it counts on from here.
   */
  heldEpoch: u53.optional(),
  /**
   * Denied MODIFIED: the byte ranges (`[offset, length]`, whole pages, in order) written or zeroed
   * since the version the item named, at most errors.ts MAX_CHANGED_RANGES; `coarse`: merged into
   * coarser ones to fit (they cover more than what changed). Absent when the store cannot tell.
   */
  changed: z
    .array(z.tuple([u53, u53]))
    .max(MAX_CHANGED_RANGES)
    .optional(),
  coarse: z.literal(true).optional(),
});

// Node agent -> replica
/**
 * The handshake (actors/auth.ts): hello (node, nonce) -> challenge (replica, nonce, the replica's proof)
 * -> auth (the node's proof, a proof per principal) -> welcome. No key is ever sent; `prove` adds a
 * principal to a running session.
 */
const hello = z.object({ type: z.literal('hello'), v: z.literal(PROTOCOL_VERSION), node: name, nonce });
/** `seal`: every later frame carries a MAC under the session key (transport/frame-mac.ts); the node's proof covers it. */
const auth = z.object({
  type: z.literal('auth'),
  proof,
  principals: z.array(z.object({ name, proof })).max(16),
  seal: z.boolean().optional(),
});
const prove = z.object({ type: z.literal('prove'), principal: name, proof });
const ping = z.object({ type: z.literal('ping'), t: u53 });
/** `size`: the target's size, fixed when this open creates it (a disk); an existing target's must match. */
/** `epoch`: the hand-over counter of this request, as on a resume item. */
const open = z.object({
  type: z.literal('open'),
  id: corr,
  target,
  requestId,
  principal,
  mode,
  instance: instance.optional(),
  size: u53.optional(),
  epoch: u53.optional(),
});
const resume = z.object({ type: z.literal('resume'), id: corr, items: z.array(ResumeItem).min(1).max(10_000) });
const write = z.object({
  type: z.literal('write'),
  id: corr,
  target,
  requestId,
  seq: u53.min(1),
  offset: u53,
  data: ioBytes,
});
const read = z.object({
  type: z.literal('read'),
  id: corr,
  target,
  requestId,
  offset: u53,
  length: z.number().int().nonnegative().max(MAX_IO_BYTES),
});
/**
 * Which pages of `[offset, offset + length)` the target keeps (store.extents): answered with `kept`.
 * A read handle and a write handle both may ask; a write handle's is fenced like its reads.
 */
const extents = z.object({ type: z.literal('extents'), id: corr, target, requestId, offset: u53, length: u53 });
const close = z.object({ type: z.literal('close'), id: corr, target, requestId });
/**
 * The owner of a target (`principal`, proven on the session) grants another principal (`grantee`)
 * read or write access to it, replacing what it had; `revoke` takes it away. Answered with `access`,
 * or an error: FORBIDDEN (the same words whether the target is another's or nobody's), INVALID_ARGUMENT.
 */
const grant = z.object({ type: z.literal('grant'), id: corr, target, principal, grantee: principal, mode });
const revoke = z.object({ type: z.literal('revoke'), id: corr, target, principal, grantee: principal });

// Replica -> node agent
const challenge = z.object({ type: z.literal('challenge'), replica: name, nonce, proof });
/** `available: false`: the replica's store is away right now (as a `notice` would say), so no resume is sent yet. */
/** `refused`: principals whose proof in `auth` was wrong; the session goes on without them. */
const welcome = z.object({
  type: z.literal('welcome'),
  session: z.string().min(1).max(64),
  replica: z.string().min(1).max(128),
  heartbeatIntervalMs: u53.min(1),
  available: z.boolean(),
  refused: z.array(name).max(16).optional(),
});
const pong = z.object({ type: z.literal('pong'), t: u53 });
/** `size`: the target's fixed size, absent if it has none. */
const opened = z.object({ type: z.literal('opened'), id: corr, version: u53, lastSeq: u53, size: u53.optional() });
const resumed = z.object({ type: z.literal('resumed'), id: corr, results: z.array(ResumeResult) });
const written = z.object({ type: z.literal('written'), id: corr, seq: u53, version: u53 });
const data = z.object({ type: z.literal('data'), id: corr, version: u53, data: ioBytes });
const closed = z.object({ type: z.literal('closed'), id: corr });
/**
 * The answer to `extents`: the kept parts of `[offset, end)` as `[offset, length]`, in order (at most
 * store/types.ts MAX_EXTENT_PAGES of them); `end` may stop short of the range asked (ask again from it).
 */
const kept = z.object({
  type: z.literal('kept'),
  id: corr,
  version: u53,
  end: u53,
  kept: z.array(z.tuple([u53, u53])).max(4096),
});
/** The target's owner and access list once a `grant` or `revoke` was applied (at most 64 grants: store/types.ts MAX_GRANTS). */
const access = z.object({
  type: z.literal('access'),
  id: corr,
  target,
  owner: principal,
  grants: z.array(z.object({ principal, mode })).max(64),
});
/** `lastSeq` on a write refused MODIFIED or SUPERSEDED: the last seq the store applied for this instance, if known. */
/** `principal` on an AUTH_FAILED answer to `prove`: the principal whose proof was wrong. */
/**
 * `outcome: 'unknown'`: the request's commit was sent to the store and never answered, so it may have
 * been applied or may still be applied later; without it, a refused request was not applied and never
 * will be.
 */
const error = z.object({
  type: z.literal('error'),
  id: corr.optional(),
  code: errorCode,
  message: z.string().max(4096),
  retryable: z.boolean(),
  lastSeq: u53.optional(),
  principal: name.optional(),
  outcome: z.literal('unknown').optional(),
});
const notice = z.object({ type: z.literal('notice'), kind: z.enum(['unavailable', 'available']) });
const revoked = z.object({ type: z.literal('revoked'), target, requestId, reason, lastSeq: u53.optional() });

export const Message = z.discriminatedUnion('type', [
  hello,
  auth,
  prove,
  ping,
  open,
  resume,
  write,
  read,
  extents,
  close,
  grant,
  revoke,
  challenge,
  welcome,
  pong,
  opened,
  resumed,
  written,
  data,
  closed,
  kept,
  access,
  error,
  notice,
  revoked,
]);

export type Message = z.infer<typeof Message>;
export type MessageType = Message['type'];
export type MessageOf<T extends MessageType> = Extract<Message, { type: T }>;
export type ResumeItem = z.infer<typeof ResumeItem>;
export type ResumeResult = z.infer<typeof ResumeResult>;
export type Mode = z.infer<typeof mode>;

export const MESSAGE_TYPES: ReadonlySet<string> = new Set(Message.options.map((o) => o.shape.type.value));

/**
 * Silence, counted in heartbeat intervals (`heartbeatIntervalMs`, the replica's setting, adopted by
 * every node agent from `welcome`). An agent pings after one silent interval and drops the session when
 * the ping goes unanswered for AGENT_PROBE_INTERVALS more; a replica drops a session silent for
 * REPLICA_SILENCE_INTERVALS; an agent drops a session whose oldest request is unanswered for
 * REQUEST_TIMEOUT_INTERVALS (frames were lost).
 */
export const AGENT_PROBE_INTERVALS = 1;
export const REPLICA_SILENCE_INTERVALS = 3;
export const REQUEST_TIMEOUT_INTERVALS = 4;
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 1000;

/** Message types whose `data` field travels as raw bytes after the JSON header. */
export const BYTES_FIELD = 'data';
