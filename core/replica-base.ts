/**
 * The state the replica's core keeps (connections, sessions, handle records, the store's mount) and
 * the small steps every part of it takes: emit an intent, answer with an error, log a warning a peer
 * can cause (rate-limited), arm a timer, run a store call and continue when its answer comes back.
 * Pure, like the core: the time is the `now` of the step under way.
 */
import { SafeResumeError, type ErrorCode } from '../errors.js';
import type { Decoded } from '../transport/codec.js';
import type { Message, MessageOf } from '../transport/messages.js';
import { LogLimiter } from './log-limit.js';
import { Keyring } from './proofs.js';
import { HandleRecords, type HandleRecord, type RecordWatcher } from './replica-handles.js';
import type { ReplicaIntent, StoreCall, StoreFailure, TimerFor } from './replica-intents.js';

/** The replica's settings, every default filled in (actors/replica.ts's ReplicaOptions). */
export interface ReplicaConfig {
  id: string;
  /** The cluster key. */
  secret: string;
  holdMs: number;
  leaseMs: number;
  heartbeatIntervalMs: number;
  helloTimeoutMs: number;
  maxUnauthenticated: number;
  maxSessionsPerNode: number;
  maxInflightPerSession: number;
  maxInflightBytesPerSession: number;
  maxSendBufferBytes: number;
  probeIntervalMs: number;
  maxHandlesPerSession: number;
  maxBadFrames: number;
  /** Whether metrics hooks are present (then `observe` intents are emitted). */
  observed: boolean;
  /** Fresh identifiers (nonces, session ids): nanoid, or seeded in simulation. */
  newId: () => string;
  /** Where handle records are reported while an inspector watches. */
  watcher?: RecordWatcher<HandleRecord> | undefined;
}

export interface Session {
  id: string;
  node: string;
  /** Principals the node proved on this session: the only ones its opens and resumes may name. */
  principals: Set<string>;
  /** What later `prove` frames are made over. */
  transcript: string;
  conn: number;
  handles: Map<string, HandleRecord>;
  lastHeardMs: number;
  badFrames: number;
  /** Recent request ids, to drop duplicates. */
  seen: Set<number>;
  /** Requests being served, and their bytes; whether reading is paused for backpressure. */
  inflight: number;
  inflightBytes: number;
  paused: boolean;
  /** Replies waiting to be sent, as the shell last said. */
  buffered: number;
  /** Replies waiting to be sent at the last silence check: a shrinking buffer is a live reader. */
  lastBuffered: number;
  /**
   * Frames that arrived while reading was paused: the transport hands over what it had already
   * read from the socket (at most one read's worth), and they wait here, in order, for the resume.
   */
  held: Decoded[];
}

/** A connection between hello and welcome: whom it claims to be and what it must prove. */
export interface Handshake {
  node: string;
  key: Buffer;
  transcript: string;
}

/** One accepted connection: its handshake, then its session. */
export interface Conn {
  remote: string;
  timer: number | undefined;
  hs: Handshake | undefined;
  session: Session | undefined;
  /** Refused during the handshake: its frames are ignored until it goes. */
  refused: boolean;
}

/** The answer to a store call, as its continuation sees it. */
export type Answer<T> = { ok: true; value: T } | { ok: false; failure: StoreFailure };

/** A request of a session, as the replica serves it. */
export type Request = MessageOf<'open' | 'resume' | 'write' | 'read' | 'extents' | 'close' | 'grant' | 'revoke'>;

/**
 * A request being served (core/replica-requests.ts): counted in flight with `bytes` since `t0`, the
 * handle it names if it needs one, until its store call is answered. One record per request, not a
 * chain of closures: the write path is the replica's hottest.
 */
export interface Serving {
  s: Session;
  msg: Request;
  bytes: number;
  t0: number;
  h: HandleRecord | undefined;
  /** A resume's items a proven principal names, as they were when it was checked. */
  allowed: boolean[] | undefined;
}

export abstract class ReplicaBase {
  protected out: ReplicaIntent[] = [];
  /** The clock's now of the step under way. */
  protected now = 0;
  readonly sessions = new Map<string, Session>();
  protected readonly conns = new Map<number, Conn>();
  /** Connections not yet authenticated (nor refused, nor timed out). */
  protected readonly pending = new Set<number>();
  protected dismounted: 'no' | 'manual' | 'auto' = 'no';
  protected lastStoreError: string | undefined;
  /** Counters for status views, tests and benchmarks. */
  readonly stats = {
    sessions: 0,
    resumeMessages: 0,
    resumesGranted: 0,
    resumesDenied: 0,
    writesApplied: 0,
    badFrames: 0,
    backpressure: 0,
  };
  protected stopped = false;
  /** Warnings a peer can cause, rate-limited (see LogLimiter). */
  protected readonly warnings = new LogLimiter({ now: () => this.now });
  protected readonly keyring: Keyring;
  /** The handles' lifecycle records, and those of lost sessions in their hold period. */
  readonly records: HandleRecords;
  private nextTimer = 1;
  private readonly timers = new Map<number, () => void>();
  private nextCall = 1;
  private readonly calls = new Map<number, ((answer: Answer<unknown>) => void) | Serving>();

  constructor(readonly cfg: ReplicaConfig) {
    this.keyring = new Keyring(cfg.secret);
    const timers = {
      arm: (what: TimerFor, ms: number, fire: () => void) => this.arm(what, ms, fire),
      cancel: (t: number) => this.cancel(t),
    };
    this.records = new HandleRecords(timers, cfg.holdMs, cfg.watcher);
  }

  /** Frames of a session, in order (core/replica.ts). */
  protected abstract onFrame(s: Session, frame: Decoded): void;

  /** The store's answer to a request being served (core/replica-requests.ts). */
  protected abstract onServed(r: Serving, answer: Answer<unknown>): void;

  protected send(conn: number, msg: Message): void {
    this.out.push({ kind: 'send', conn, msg });
  }

  protected reply(
    conn: number,
    id: number | undefined,
    code: ErrorCode,
    message: string,
    lastSeq?: number,
    maybeApplied = false,
  ): void {
    const err: Message = { type: 'error', code, message, retryable: new SafeResumeError(code).retryable };
    if (id !== undefined) err.id = id;
    if (lastSeq !== undefined) err.lastSeq = lastSeq;
    if (maybeApplied) err.outcome = 'unknown';
    this.send(conn, err);
  }

  protected log(level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown> = {}): void {
    this.out.push({ kind: 'log', level, msg, fields });
  }

  /** A warning a peer can cause: the first few of each kind per window, then how many were left out. */
  protected warn(kind: string, fields: Record<string, unknown>, msg: string): void {
    const t = this.warnings.take(kind);
    if (t.log) this.log('warn', msg, { ...fields, ...(t.suppressed ? { suppressed: t.suppressed } : {}) });
  }

  protected arm(what: TimerFor, ms: number, fire: () => void): number {
    const timer = this.nextTimer++;
    this.timers.set(timer, fire);
    this.out.push({ kind: 'arm', timer, ms, for: what });
    return timer;
  }

  protected cancel(timer: number | undefined): void {
    if (timer === undefined || !this.timers.delete(timer)) return;
    this.out.push({ kind: 'cancel', timer });
  }

  /** A timer fired: run what it was armed for (nothing, if it was cancelled meanwhile). */
  protected fired(timer: number): void {
    const fire = this.timers.get(timer);
    if (!fire) return;
    this.timers.delete(timer);
    fire();
  }

  /**
   * Run a store operation; `then` continues with its answer (the op's result type is the caller's to
   * name), or, for a request being served, `onServed`.
   */
  protected call<T>(what: StoreCall, then: ((answer: Answer<T>) => void) | Serving): void {
    const call = this.nextCall++;
    this.calls.set(call, then as ((answer: Answer<unknown>) => void) | Serving);
    this.out.push({ kind: 'store', call, what });
  }

  protected answered(call: number, answer: Answer<unknown>): void {
    const then = this.calls.get(call);
    if (!then) return;
    this.calls.delete(call);
    if (typeof then === 'function') then(answer);
    else this.onServed(then, answer);
  }

  /**
   * Replies waiting to be sent past which a session stops being read; not below the socket's
   * high-water mark, or no 'drain' would ever come to resume reading.
   */
  protected get maxSendBytes(): number {
    return Math.max(this.cfg.maxSendBufferBytes, 64 * 1024);
  }

  /**
   * Tell the shell to report the bytes waiting on the connection once what this step sent is sent.
   * A session being read only needs to hear of enough to stop reading it; a paused one, of any.
   */
  protected checkBuffered(s: Session): void {
    this.out.push({ kind: 'buffered', conn: s.conn, atLeast: s.paused ? 0 : this.maxSendBytes });
  }
}
