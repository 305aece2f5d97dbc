/**
 * NodeAgent: one per compute node. The protocol is decided by the pure core (core/agent.ts); this
 * shell owns the I/O: the session with a replica (the node-session machine: connect, heartbeats,
 * failover), the node-local requestId file, timers, and the SDK's promises. It carries the core's
 * intents out in a stated order: keeps and forgets first, written and fsynced in one batch, then
 * everything else in the order the core asked, so nothing that depends on a requestId being on
 * disk is sent before it is. A `keep-later` holds nothing back: it is written with the other pending
 * ones in one batch on a later turn of the event loop (or with the next batch of keeps, if sooner).
 */
import { createActor, fromPromise, type Actor } from 'xstate';
import { SafeResumeError } from '../errors.js';
import { AgentCore, type Input, type Intent } from '../core/agent.js';
import type { AccessCall } from '../core/intents.js';
import { newHandle, type CoreHandle, type HandleState, type OpenParams } from '../core/handle.js';
import { backoffDelay, nodeSessionMachine, type Connected } from '../machines/node-session.js';
import { DEFAULT_HEARTBEAT_INTERVAL_MS } from '../transport/messages.js';
import type { Connection, Transport } from '../transport/types.js';
import { actorLog, defaultEnv, type Env } from './env.js';
import { handshake, proveFrame, type SessionProof } from './handshake.js';
import { issueCredential, NAME_PATTERN, nbdPsk, type Credential } from './auth.js';
import { FileKeptIds, MemoryKeptIds, type KeptHandle, type KeptIds } from './kept.js';
import { HandleMirrors } from './mirror.js';
import { LazyEmitter } from './emitter.js';
import { LogLimiter } from './log-limit.js';

export interface NodeAgentOptions {
  id: string;
  /** Replica addresses, tried in order; a lost replica fails over to the next. */
  replicas: string[];
  transport: Transport;
  /** This node's credential (`safe-resume credentials issue --node ID`); its name must be `id`. */
  credential?: Credential;
  /** Principals this node may speak for; an application may also bring its own credential. */
  principals?: Credential[];
  /**
   * The cluster key itself, for processes of the storage side (tests, the simulation, the launcher's
   * own commands): the node's and any principal's credential are derived from it. A compute node
   * should get `credential` instead.
   */
  secret?: string;
  /** Where the node keeps its applications' requestIds. Without it they live in memory only. */
  dataDir?: string;
  kept?: KeptIds;
  env?: Partial<Env>;
  /**
   * The heartbeat interval is the replica's (adopted from `welcome`). Set this to insist on a value:
   * a replica advertising another one is refused.
   */
  heartbeatIntervalMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  unavailableFailoverMs?: number;
  connectTimeoutMs?: number;
  /**
   * `start()` rejects (UNAVAILABLE, with each replica's last cause) if no replica welcomed the node
   * within this long; the agent keeps trying after that (crash() or stop() ends it). Absent, start()
   * waits until it connects or is refused.
   */
  startTimeoutMs?: number;
  /** Metrics hooks (cluster/metrics.ts); absent, nothing is measured. */
  observe?: NodeObserver;
  /** Operations one paused handle may queue, and their bytes (default 4096 and 64 MiB); past them QUEUE_FULL. */
  maxQueuedOpsPerHandle?: number;
  maxQueuedBytesPerHandle?: number;
}

export type { OpenParams } from '../core/handle.js';

/** Why the last attempt to reach one replica failed. */
export interface ConnectCause {
  replica: string;
  /**
   * A short code: a socket's (`ECONNREFUSED`, `ECONNRESET`), a TLS one (`ERR_TLS_CERT_ALTNAME_INVALID`,
   * ...), `NOT_WEBSOCKET` (an HTTP answer that is not an upgrade), `TIMEOUT`, `CLOSED` (dropped during
   * the handshake), or the storage's refusal (`AUTH_FAILED`, `INVALID_ARGUMENT`).
   */
  cause: string;
  /** The error's message, in words. */
  message: string;
}

/** One round over every replica that failed: the round's number since the last session, and each replica's cause. */
export interface ConnectRound {
  round: number;
  causes: ConnectCause[];
}

export interface NodeAgentEvents {
  /** Every replica was tried once more and none welcomed the node. */
  'connect-failed': [ConnectRound];
}

/** The short code of a failed connect (see ConnectCause.cause). */
function causeOf(err: unknown): string {
  if (err instanceof SafeResumeError) return err.code;
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && code.length > 0) return code;
  const message = err instanceof Error ? err.message : String(err);
  if (/timed out|no welcome/i.test(message)) return 'TIMEOUT';
  if (/closed the connection/.test(message)) return 'CLOSED';
  return 'ERROR';
}

/** What a node agent reports as it works, for /metrics. */
export interface NodeObserver {
  /** A handle entered state `to` (with the invalidation reason, if any). */
  transition(to: HandleState, reason: string | undefined): void;
  /** An application's read or write answered after `ms`. */
  operation(kind: 'read' | 'write', ok: boolean, ms: number): void;
}

export class NodeAgent extends LazyEmitter<NodeAgentEvents> {
  readonly id: string;
  readonly kept: KeptIds;
  readonly core: AgentCore;
  private readonly env: Env;
  private readonly opts: NodeAgentOptions;
  private readonly session: Actor<typeof nodeSessionMachine>;
  private conn: Connection | undefined;
  private outbox: Intent[] = [];
  private flushing = false;
  /** Handles whose `keep-later` waits for the next write of the file (at most once each). */
  private readonly later = new Set<CoreHandle>();
  private laterTimer: unknown;
  private readonly opening = new Map<CoreHandle, { resolve: () => void; reject: (e: Error) => void }>();
  private readonly closing = new Map<CoreHandle, Array<() => void>>();
  private readonly timers = new Map<CoreHandle, unknown>();
  private readonly mirrors: HandleMirrors | undefined;
  private retryTimer: unknown;
  private watchdog: unknown;
  private diskError: string | undefined;
  /** requestIds whose removal the node-local file did not take; tried again with every later write and tick. */
  private readonly unforgotten = new Set<string>();
  private started = false;
  private stopped = false;
  private readonly credential: Credential;
  /** Principal credentials this node speaks for, by name. */
  private readonly principals = new Map<string, Credential>();
  /** The current session's proof context (for `prove` frames of principals added later). */
  private proof: SessionProof | undefined;
  private startWaiters: Array<{ resolve: () => void; reject: (e: Error) => void; timer?: unknown }> = [];
  /** Each replica's last failed attempt since the last session (in the order of `replicas`). */
  private readonly causes = new Map<string, ConnectCause>();
  private failedAttempts = 0;
  /** Failed attempts are logged, but not a line per attempt when the backoff is short. */
  private readonly connectLog: LogLimiter;

  constructor(opts: NodeAgentOptions) {
    super();
    if (opts.replicas.length === 0) throw new SafeResumeError('INVALID_ARGUMENT', 'a node agent needs at least one replica address');
    this.opts = opts;
    this.id = opts.id;
    if (opts.credential) {
      if (opts.credential.kind !== 'node' || opts.credential.name !== opts.id) {
        throw new SafeResumeError('INVALID_ARGUMENT', `node agent ${opts.id} was given the ${opts.credential.kind} credential of ${JSON.stringify(opts.credential.name)}; issue one with \`safe-resume credentials issue --node ${opts.id}\``);
      }
      this.credential = opts.credential;
    } else if (opts.secret) this.credential = issueCredential(opts.secret, 'node', opts.id);
    else throw new SafeResumeError('INVALID_ARGUMENT', `node agent ${opts.id} needs its node credential (credential) or the cluster key (secret)`);
    for (const p of opts.principals ?? []) this.addPrincipal(p);
    this.env = defaultEnv(opts.env);
    this.env.log = actorLog(this.env.log, opts.id);
    this.connectLog = new LogLimiter(this.env.clock, 5, 30_000);
    this.kept = opts.kept ?? (opts.dataDir ? new FileKeptIds(opts.dataDir, opts.id) : new MemoryKeptIds());
    this.core = new AgentCore(opts.id);
    if (opts.maxQueuedOpsPerHandle !== undefined) this.core.maxQueuedOps = opts.maxQueuedOpsPerHandle;
    if (opts.maxQueuedBytesPerHandle !== undefined) this.core.maxQueuedBytes = opts.maxQueuedBytesPerHandle;
    this.mirrors = this.env.inspect ? new HandleMirrors(this.env) : undefined;
    this.core.reportIo = this.mirrors !== undefined;
    const random = this.env.random;
    const machine = nodeSessionMachine.provide({
      actors: {
        connect: fromPromise<Connected, { url: string }>(({ input }) =>
          this.connect(input.url).then(
            (ok) => (this.connectedTo(), ok),
            (err: unknown) => {
              this.connectFailed(input.url, err);
              throw err;
            },
          ),
        ),
      },
      actions: {
        sendPing: () => void this.conn?.send({ type: 'ping', t: this.env.clock.now() }),
        pauseHandles: ({ context, event }) => this.step({ type: 'unavailable', why: event.type === 'STORAGE_UNAVAILABLE' ? 'notice unavailable' : lostWhy(context.lastError, event) }),
        // The action's context, not getSnapshot(): the snapshot is still the old one while actions run.
        resumeHandles: ({ context }) => this.step({ type: 'ready', session: context.session ?? 'unknown' }),
        dropConnection: ({ context, event }) => {
          const conn = this.conn;
          this.conn = undefined;
          this.proof = undefined;
          conn?.terminate();
          this.step({ type: 'disconnected', why: lostWhy(context.lastError, event) });
        },
      },
      delays: { backoff: ({ context }) => backoffDelay(context.attempt, context.backoffBaseMs, context.backoffMaxMs, random()) },
    });
    this.session = createActor(machine, {
      clock: this.env.clock,
      inspect: this.env.inspect,
      input: {
        replicas: opts.replicas,
        heartbeatIntervalMs: opts.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS,
        backoffBaseMs: opts.backoffBaseMs ?? 100,
        backoffMaxMs: opts.backoffMaxMs ?? 2000,
        unavailableFailoverMs: opts.unavailableFailoverMs ?? 10_000,
      },
    });
    this.session.subscribe((snap) => {
      if (snap.matches('connected')) this.settleStart();
      else if (snap.matches('reconnecting') && /^(AUTH_FAILED|INVALID_ARGUMENT)/.test(snap.context.lastError ?? '')) this.settleStart(new SafeResumeError(snap.context.lastError!.startsWith('AUTH') ? 'AUTH_FAILED' : 'INVALID_ARGUMENT', snap.context.lastError));
    });
  }

  /**
   * Start the session. Resolves once connected; rejects if the storage refuses this node, or (with
   * `startTimeoutMs`) when no replica welcomed it in time, naming each replica's last cause.
   */
  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      const w: (typeof this.startWaiters)[number] = { resolve, reject };
      const ms = this.opts.startTimeoutMs;
      if (ms !== undefined) w.timer = this.env.clock.setTimeout(() => this.startTimedOut(w, ms), ms);
      this.startWaiters.push(w);
      if (!this.started) {
        this.started = true;
        this.countBoot();
        this.session.start();
        this.tick();
      } else if (this.session.getSnapshot().matches('connected')) this.settleStart();
    });
  }

  /**
   * One more start of this agent, counted in the node-local file before any request is sent: the
   * hand-over counters of this start's opens and resumes are above every earlier start's.
   */
  private countBoot(): void {
    const counted = this.kept.nextBoot?.();
    if (!counted) return;
    // 2^32 requests per start; exact in a double for 2^21 starts (past that, a node that falls behind
    // its own records counts on from them: see AgentCore).
    this.core.epochBase = Math.min(counted.boot * 2 ** 32, Number.MAX_SAFE_INTEGER - 2 ** 32);
    if (counted.error) {
      this.env.log.warn({ err: counted.error, boot: counted.boot }, 'the count of agent starts could not be read or kept on disk; until it is, a late request from before this start could take a handle back');
    }
  }

  private tick(): void {
    this.watchdog = this.env.clock.setTimeout(() => {
      if (this.stopped) return;
      this.step({ type: 'tick' });
      if (this.unforgotten.size > 0 && !this.flushing) this.persist(new Map());
      this.tick();
    }, this.session.getSnapshot().context.heartbeatIntervalMs);
  }

  private settleStart(err?: Error): void {
    const waiters = this.startWaiters;
    this.startWaiters = [];
    for (const w of waiters) {
      this.env.clock.clearTimeout(w.timer);
      if (err) w.reject(err);
      else w.resolve();
    }
  }

  private startTimedOut(w: (typeof this.startWaiters)[number], ms: number): void {
    const i = this.startWaiters.indexOf(w);
    if (i < 0) return;
    this.startWaiters.splice(i, 1);
    const causes = this.connectCauses;
    const said = causes.length > 0 ? causes.map((c) => `${c.cause} from ${c.replica}: ${c.message.replace(`cannot connect to ${c.replica}: `, '')}`).join('; ') : `no attempt finished yet (connecting to ${this.opts.replicas.join(', ')})`;
    const err = new SafeResumeError('UNAVAILABLE', `node ${this.id} could not connect to any replica within ${ms} ms: ${said}`) as SafeResumeError & { causes: ConnectCause[] };
    err.causes = causes;
    w.reject(err);
  }

  /**
   * Why the node is not connected: each replica's last failed attempt since the last session, in the
   * order of `replicas` (empty while a session is up, and before any attempt failed).
   */
  get connectCauses(): ConnectCause[] {
    return this.opts.replicas.flatMap((r) => this.causes.get(r) ?? []);
  }

  /** The most recent failed attempt since the last session, if any (status views show it). */
  lastConnectCause: ConnectCause | undefined;

  private connectedTo(): void {
    if (this.failedAttempts > 0) this.env.log.info({ replica: this.replica, attempts: this.failedAttempts }, 'connected after failed attempts');
    this.causes.clear();
    this.failedAttempts = 0;
    this.lastConnectCause = undefined;
  }

  /** A failed attempt: logged (rate-limited) with its cause; a round over every replica is an event. */
  private connectFailed(url: string, err: unknown): void {
    if (this.stopped) return;
    const c: ConnectCause = { replica: url, cause: causeOf(err), message: err instanceof Error ? err.message : String(err) };
    this.causes.delete(url);
    this.causes.set(url, c);
    this.lastConnectCause = c;
    this.failedAttempts++;
    const take = this.connectLog.take('connect');
    if (take.log) this.env.log.warn({ replica: url, cause: c.cause, err: c.message, attempt: this.failedAttempts, ...(take.suppressed > 0 ? { suppressed: take.suppressed } : {}) }, `could not connect to ${url}: ${c.cause}`);
    const n = this.opts.replicas.length;
    if (this.failedAttempts % n === 0) this.emit('connect-failed', { round: this.failedAttempts / n, causes: this.connectCauses });
  }

  /**
   * Stop for good: close every open handle (writes already sent are answered first, locks released),
   * waiting at most `timeoutMs` for the storage, then end the session and release every socket, timer
   * and file, so the process can exit. Handles the storage did not answer for keep their requestIds on
   * disk, and their locks lapse after the hold period.
   */
  async stop(timeoutMs = 5000): Promise<void> {
    if (this.stopped) return;
    const open = [...this.core.handles.values()].filter((h) => h.state !== 'closed');
    let timer: unknown;
    await Promise.race([
      Promise.allSettled(open.map((h) => this.close(h))),
      new Promise<void>((r) => (timer = this.env.clock.setTimeout(r, timeoutMs))),
    ]);
    this.env.clock.clearTimeout(timer);
    this.crash();
  }

  /** Stop as a crash would: drop the connection, settle nothing. Kept requestIds stay on disk. */
  crash(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const w of this.startWaiters) this.env.clock.clearTimeout(w.timer);
    this.env.clock.clearTimeout(this.watchdog);
    this.env.clock.clearTimeout(this.retryTimer);
    this.env.clock.clearTimeout(this.laterTimer);
    this.later.clear();
    for (const t of this.timers.values()) this.env.clock.clearTimeout(t);
    this.timers.clear();
    this.session.send({ type: 'STOP' });
    this.session.stop();
    this.core.handles.clear();
    this.outbox = [];
    this.kept.close?.();
  }

  /** The session state, e.g. `connected`, `reconnecting`. */
  get state(): string {
    const v = this.session.getSnapshot().value;
    return typeof v === 'string' ? v : Object.keys(v)[0]!;
  }

  get replica(): string | undefined {
    return this.session.getSnapshot().context.replica;
  }

  get sessionId(): string | undefined {
    return this.session.getSnapshot().context.session;
  }

  get machine(): Actor<typeof nodeSessionMachine> {
    return this.session;
  }

  // ---- The API the application SDK uses ----

  /**
   * Speak for a principal from now on: its proof goes to the replica of the current session at once
   * (before any open that names it) and into every later handshake.
   */
  addPrincipal(c: Credential): void {
    if (c.kind !== 'principal') throw new SafeResumeError('INVALID_ARGUMENT', `a ${c.kind} credential (${c.name}) is not a principal's`);
    const had = this.principals.get(c.name);
    if (had?.key === c.key) return;
    this.principals.set(c.name, c);
    const s = this.proof;
    if (s && this.conn?.isOpen) {
      s.proven.add(c.name);
      this.conn.send(proveFrame(c, s));
    }
  }

  /**
   * The replica refused a principal's proof (a stale or foreign credential): stop offering it, so the
   * node's other principals keep their sessions; that principal's opens are FORBIDDEN until a good
   * credential is given again.
   */
  private refusePrincipal(name: string): void {
    if (!this.principals.delete(name)) return;
    this.proof?.proven.delete(name);
    this.env.log.error({ principal: name }, 'the storage refused this principal\'s credential; its applications cannot open anything until a valid one is given');
  }

  /**
   * Make sure this node can prove `principal`: known already, or derived from the cluster key if the
   * node was given it. Otherwise FORBIDDEN: the application must bring the principal's credential.
   */
  usePrincipal(principal: string): void {
    if (this.principals.has(principal)) return;
    if (!this.opts.secret) throw new SafeResumeError('FORBIDDEN', `node ${this.id} holds no credential for principal ${JSON.stringify(principal)}; pass the application the principal's credential (safe-resume credentials issue --principal ${principal})`);
    this.addPrincipal(issueCredential(this.opts.secret, 'principal', principal));
  }

  /**
   * The NBD TLS pre-shared key of `principal` (actors/auth.ts nbdPsk), if this node can verify it: it
   * holds the principal's credential, or the cluster key. Undefined otherwise (or for a bad name).
   */
  nbdPsk(principal: string): Buffer | undefined {
    const held = this.principals.get(principal);
    if (held) return nbdPsk(held);
    if (!this.opts.secret || !NAME_PATTERN.test(principal)) return undefined;
    return nbdPsk(issueCredential(this.opts.secret, 'principal', principal));
  }

  /** Open (or reclaim) a handle: the handle at once, and a promise that settles when it is granted or refused. */
  open(p: OpenParams): { h: CoreHandle; opened: Promise<void> } {
    if (this.stopped) throw new SafeResumeError('CLOSED', `node agent ${this.id} is stopped`);
    if (this.core.handles.has(p.requestId)) throw new SafeResumeError('INVALID_ARGUMENT', `requestId ${p.requestId} is already open on ${this.id}`);
    const h = newHandle(p);
    this.mirrors?.add(h);
    const opened = new Promise<void>((resolve, reject) => this.opening.set(h, { resolve, reject }));
    this.step({ type: 'open', h });
    return { h, opened };
  }

  /** Grant (`read`, `write`) or revoke (`none`) a principal's access to a target `principal` owns; the target's access list once done. */
  access(call: Omit<AccessCall, 'settle'>): Promise<{ owner: string; grants: Array<{ principal: string; mode: 'read' | 'write' }> }> {
    if (this.stopped) return Promise.reject(new SafeResumeError('CLOSED', `node agent ${this.id} is stopped`));
    return new Promise((resolve, reject) => this.step({ type: 'access', call: { ...call, settle: { resolve, reject } } }));
  }

  io(h: CoreHandle, op: CoreHandle['ops'][number]): void {
    if (this.opts.observe) this.calledAt.set(op, this.env.clock.now());
    this.step({ type: 'io', h, op });
  }

  /** When each operation was called, while metrics are measured. */
  private readonly calledAt = new WeakMap<object, number>();

  close(h: CoreHandle): Promise<void> {
    if (h.state === 'closed') return Promise.resolve();
    return new Promise((resolve) => {
      const waiters = this.closing.get(h);
      if (waiters) waiters.push(resolve);
      else this.closing.set(h, [resolve]);
      this.step({ type: 'close', h });
    });
  }

  /** The application process is gone: drop its handle without a word to the storage. */
  appGone(h: CoreHandle): void {
    this.step({ type: 'app-gone', h });
  }

  /** Handles the agent holds, for status views and tests. */
  list(): Array<{ app: string; target: string; requestId: string; mode: 'read' | 'write'; state: HandleState; durable: boolean }> {
    return [...this.core.handles.values()].map(({ app, target, requestId, mode, state, durable }) => ({ app, target, requestId, mode, state, durable }));
  }

  /** Whether a handle with this requestId is open (or being opened) on this agent. */
  holds(requestId: string): boolean {
    return this.core.handles.has(requestId);
  }

  findKept(app: string, target: string): KeptHandle | undefined {
    return this.kept.find(app, target);
  }

  // ---- Carrying out the core's intents ----

  private step(input: Input): void {
    if (this.stopped) return;
    const intents = this.core.step(input);
    if (intents.length === 0) return;
    for (const i of intents) this.outbox.push(i);
    if (!this.flushing) {
      this.flushing = true;
      queueMicrotask(() => this.flush());
    }
  }

  /** Keeps and forgets of the batch first (one write, one fsync), then every other intent in order. */
  private flush(): void {
    this.flushing = false;
    while (this.outbox.length > 0 && !this.stopped) {
      const batch = this.outbox;
      this.outbox = [];
      const last = new Map<string, CoreHandle | null>();
      for (const i of batch) {
        if (i.kind === 'keep') last.set(i.h.requestId, i.h);
        else if (i.kind === 'forget') last.set(i.requestId, null);
      }
      if (last.size > 0) {
        // Keeps waiting for later go along: this write costs no more for them, and reports them.
        const along: CoreHandle[] = [];
        for (const h of this.later) {
          const kept = last.get(h.requestId);
          if (kept === h) along.push(h);
          else if (kept === undefined && this.stillKept(h)) {
            last.set(h.requestId, h);
            along.push(h);
          }
        }
        for (const h of along) this.later.delete(h);
        if (this.persist(last) && along.length > 0) this.step({ type: 'kept', hs: along, error: undefined });
      }
      for (const i of batch) this.carry(i);
    }
  }

  /**
   * Write the keeps that wait for later, in one batch, skipping a handle no longer kept (stillKept).
   */
  private keepLater(): void {
    this.laterTimer = undefined;
    if (this.stopped || this.later.size === 0) return;
    const hs = [...this.later].filter((h) => this.stillKept(h));
    this.later.clear();
    if (hs.length === 0) return;
    // A failure is reported by persist (the handles are then kept again on every tick).
    if (this.persist(new Map(hs.map((h) => [h.requestId, h])))) this.step({ type: 'kept', hs, error: undefined });
  }

  /**
   * Whether a keep asked for later may still be written: the core holds the handle and it is open. A
   * handle closing or closed had its entry forgotten (writing it back would let the application's
   * next open reclaim a closed requestId); one invalidated or gone is the business of what let it go.
   */
  private stillKept(h: CoreHandle): boolean {
    return this.core.handles.get(h.requestId) === h && (h.state === 'active' || h.state === 'paused' || h.state === 'resuming');
  }

  /** Write and fsync one batch; false (and the core told, for the handles it puts) if the disk refused it. */
  private persist(last: Map<string, CoreHandle | null>): boolean {
    const put: CoreHandle[] = [];
    const removed: string[] = [];
    for (const id of this.unforgotten) if (!last.has(id)) last.set(id, null);
    for (const [id, h] of last) (h ? put.push(h) : removed.push(id));
    try {
      this.kept.apply({
        put: put.map((h) => ({ app: h.app, target: h.target, requestId: h.requestId, principal: h.principal, mode: h.mode, version: h.keptVersion, instance: h.instance, ...(h.takeover ? { takeover: true } : {}) })),
        remove: removed,
      });
      this.diskError = undefined;
      this.unforgotten.clear();
      const recovered = put.filter((h) => !h.durable);
      if (recovered.length > 0) this.step({ type: 'kept', hs: recovered, error: undefined });
      return true;
    } catch (err) {
      // The agent keeps serving; the handles say they are not durable until a later write succeeds.
      const code = (err as { code?: unknown }).code;
      this.diskError = typeof code === 'string' ? code : String(err);
      this.env.log.error({ err: String(err), handles: put.length, removed: removed.length }, 'could not write the node-local requestId file');
      for (const id of removed) this.unforgotten.add(id);
      if (put.length > 0) this.step({ type: 'kept', hs: put, error: this.diskError });
      return false;
    }
  }

  private carry(i: Intent): void {
    switch (i.kind) {
      case 'send':
        if (this.conn?.isOpen) this.conn.send(i.msg);
        return;
      case 'keep':
      case 'forget':
        return;
      case 'keep-later':
        this.later.add(i.h);
        this.laterTimer ??= this.env.clock.setTimeout(() => this.keepLater(), 0);
        return;
      case 'changed':
        this.mirrors?.changed(i.h, i.event, i.to);
        if (i.event !== 'IO') {
          i.h.owner.changed(i.from, i.to, i.event);
          this.opts.observe?.transition(i.to, i.to === 'invalidated' ? i.h.reason : undefined);
        }
        return;
      case 'durability':
        return i.h.owner.durability(i.h.durable, i.h.durable ? undefined : this.diskError);
      case 'opened': {
        const w = this.opening.get(i.h);
        this.opening.delete(i.h);
        return w?.resolve();
      }
      case 'open-failed': {
        const w = this.opening.get(i.h);
        this.opening.delete(i.h);
        const err = new SafeResumeError(i.code, i.message);
        if (i.h.how === 'resume') err.requestId = i.h.requestId;
        return w?.reject(err);
      }
      case 'closed': {
        const ws = this.closing.get(i.h) ?? [];
        this.closing.delete(i.h);
        for (const w of ws) w();
        return;
      }
      case 'settle': {
        const { s } = i;
        const t0 = this.opts.observe ? this.calledAt.get(s.op) : undefined;
        if (t0 !== undefined) this.opts.observe!.operation(s.op.kind, s.ok, this.env.clock.now() - t0);
        if (s.ok) s.op.settle?.resolve(s.value);
        else s.op.settle?.reject(new SafeResumeError(s.code, s.message, s.reason));
        return;
      }
      case 'pause-timer': {
        this.env.clock.clearTimeout(this.timers.get(i.h));
        this.timers.delete(i.h);
        const h = i.h;
        if (i.on) this.timers.set(h, this.env.clock.setTimeout(() => this.step({ type: 'pause-timeout', h }), h.pauseTimeoutMs));
        return;
      }
      case 'retry-later':
        if (this.retryTimer !== undefined) return;
        this.retryTimer = this.env.clock.setTimeout(() => {
          this.retryTimer = undefined;
          this.step({ type: 'retry' });
        }, backoffDelay(2, this.opts.backoffBaseMs ?? 100, this.opts.backoffMaxMs ?? 2000, this.env.random()));
        return;
      case 'drop-session':
        if (this.conn) this.session.send({ type: 'SOCKET_CLOSED', reason: i.why });
        return;
      case 'access-done':
        if (i.ok) i.call.settle.resolve(i.access);
        else i.call.settle.reject(new SafeResumeError(i.code, i.message));
        return;
      case 'log':
        this.env.log[i.level](i.fields, i.msg);
        return;
    }
  }

  // ---- The connection ----

  private connect(url: string): Promise<Connected> {
    if (this.stopped) return Promise.reject(new SafeResumeError('CLOSED', `node agent ${this.id} is stopped`));
    const o = {
      transport: this.opts.transport,
      credential: this.credential,
      principals: [...this.principals.values()],
      nonce: this.env.newId(),
      clock: this.env.clock,
      timeoutMs: this.opts.connectTimeoutMs ?? 2000,
      heartbeatIntervalMs: this.opts.heartbeatIntervalMs,
    };
    return handshake(url, o, {
      welcomed: (conn, proof) => {
        if (this.stopped) return conn.terminate();
        this.conn = conn;
        this.proof = proof;
        for (const name of proof.refused) this.refusePrincipal(name);
        // Principals added while the handshake was under way, or past what `auth` carries, are proven
        // before anything else is sent.
        for (const p of this.principals.values()) {
          if (proof.proven.has(p.name)) continue;
          proof.proven.add(p.name);
          conn.send(proveFrame(p, proof));
        }
      },
      closed: (conn, reason) => {
        if (this.conn === conn) this.session.send({ type: 'SOCKET_CLOSED', reason });
      },
      frame: (conn, frame) => {
        if (this.conn !== conn) return;
        if (!frame.ok) return void this.env.log.warn({ code: frame.code, message: frame.message }, 'bad frame from replica');
        // Liveness and storage notices drive the session; everything else is the protocol's.
        const msg = frame.msg;
        if (msg.type === 'error' && msg.principal !== undefined && msg.id === undefined) return this.refusePrincipal(msg.principal);
        if (msg.type === 'pong') this.session.send({ type: 'HEARD' });
        else if (msg.type === 'notice') this.session.send({ type: msg.kind === 'unavailable' ? 'STORAGE_UNAVAILABLE' : 'STORAGE_AVAILABLE' });
        else this.step({ type: 'frame', msg });
      },
    });
  }
}

/** Why a session was lost (or an attempt failed), in the words of a log line. */
function lostWhy(lastError: string | undefined, event: { type: string; reason?: string }): string {
  if (event.type === 'SOCKET_CLOSED') return `socket closed (${event.reason ?? 'no reason given'})`;
  if (lastError === 'heartbeat timeout') return 'heartbeat silence (no pong in time)';
  return lastError ?? event.type;
}
