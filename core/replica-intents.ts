/**
 * What goes into the replica's core and what comes out of it (core/replica.ts): the whole interface
 * between the replica's protocol and the shell (actors/replica.ts) that owns the listener, the
 * connections, the store and the clock. Connections are named by a number the shell gives each at
 * accept; timers and store calls by numbers the core gives them.
 */
import type { ErrorCode } from '../errors.js';
import type { Decoded } from '../transport/codec.js';
import type { Message } from '../transport/messages.js';
import type {
  AccessRequest,
  ExtentsRequest,
  HandleRef,
  OpenRequest,
  ReadRequest,
  ResumeRequest,
  WriteRequest,
} from '../store/types.js';

/** One store operation the shell runs for the core; its answer comes back with the same `call` number. */
export type StoreCall =
  | { op: 'open'; req: OpenRequest }
  | { op: 'resume'; reqs: ResumeRequest[] }
  | { op: 'write'; req: WriteRequest }
  | { op: 'read'; req: ReadRequest }
  | { op: 'extents'; req: ExtentsRequest }
  | { op: 'close'; ref: HandleRef; session: string }
  | { op: 'access'; req: AccessRequest }
  | { op: 'renew'; session: string; refs: HandleRef[]; leaseMs: number }
  | { op: 'ping' };

/** Why a store call failed (it threw): the store is away, it refused with a code, or something else broke. */
export type StoreFailure =
  /** StoreUnavailableError; `maybeApplied`: its commit was sent and never answered. */
  | { kind: 'unavailable'; message: string; maybeApplied: boolean }
  /** A SafeResumeError: an answer with a code. */
  | { kind: 'refused'; code: ErrorCode; message: string }
  | { kind: 'internal'; error: unknown };

/** The answer to a store call: its result (the store's own type for the call's op), or why it failed. */
export type StoreAnswer = { ok: true; value: unknown } | { ok: false; failure: StoreFailure };

/** What the core's timers are for; the shell arms them on its clock and says when one fires. */
export type TimerFor =
  | { kind: 'hello'; conn: number }
  | { kind: 'terminate'; conn: number }
  | { kind: 'hold'; handles: ReadonlyArray<{ target: string; requestId: string }> }
  | { kind: 'probe' };

export type ReplicaInput =
  /** The listener accepted a connection. */
  | { type: 'accept'; conn: number; remote: string }
  /** A frame arrived (already decoded and validated; a bad one is `{ ok: false }`). */
  | { type: 'frame'; conn: number; frame: Decoded }
  | { type: 'closed'; conn: number }
  /** The connection's peer took what was buffered for it; `buffered` is what still waits. */
  | { type: 'drain'; conn: number; buffered: number }
  /** The answer to a `buffered` intent: the bytes waiting to be sent on the connection now. */
  | { type: 'buffered'; conn: number; bytes: number }
  | { type: 'store-done'; call: number; answer: StoreAnswer }
  | { type: 'timer'; timer: number }
  /** The renewal interval passed. */
  | { type: 'renew-tick' }
  /** One heartbeat interval passed: drop silent sessions (`buffered`: every connection's waiting bytes). */
  | { type: 'reap-tick'; buffered: ReadonlyMap<number, number> }
  /** The listener dropped a source's oldest connection not yet authenticated. */
  | { type: 'source-limited'; source: string; held: number }
  /** The operator's dismount and mount. */
  | { type: 'dismount' }
  | { type: 'mount' }
  | { type: 'stop' };

export type ReplicaIntent =
  | { kind: 'send'; conn: number; msg: Message }
  | { kind: 'close'; conn: number; code: number; reason: string }
  | { kind: 'terminate'; conn: number }
  /** The peer authenticated: lift the limits a connection has before that. */
  | { kind: 'trust'; conn: number }
  /** Seal every later frame of the connection with `key`. */
  | { kind: 'protect'; conn: number; key: Buffer }
  | { kind: 'pause-reading'; conn: number }
  | { kind: 'resume-reading'; conn: number }
  /**
   * Tell the core (input `buffered`) how many bytes wait to be sent on the connection, once what came
   * before this is done, if they are at least `atLeast` (fewer cannot change what it decides).
   */
  | { kind: 'buffered'; conn: number; atLeast: number }
  | { kind: 'store'; call: number; what: StoreCall }
  | { kind: 'arm'; timer: number; ms: number; for: TimerFor }
  | { kind: 'cancel'; timer: number }
  | { kind: 'log'; level: 'info' | 'warn' | 'error'; msg: string; fields: Record<string, unknown> }
  /** For the metrics hooks (ReplicaObserver), only when they are present. */
  | { kind: 'observe'; what: 'request'; type: string; ms: number }
  | { kind: 'observe'; what: 'resume'; outcome: string }
  | { kind: 'observe'; what: 'write-applied' | 'bad-frame' };
