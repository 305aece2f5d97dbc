/**
 * NodeAgent: one per compute node. Holds the node's session with the storage (the node-session
 * machine), detects failures, pauses the node's handles, reconnects with failover, and resumes
 * every paused handle in one batch. Writes get sequence numbers here and are replayed after a
 * resume until acknowledged, so each is applied exactly once.
 */
import { createActor, fromPromise, type Actor } from 'xstate';
import { SafeResumeError, isErrorCode, type ErrorCode, type InvalidationReason } from '../errors.js';
import { nodeSessionMachine, type Connected } from '../machines/node-session.js';
import { PROTOCOL_VERSION, type Message, type MessageOf, type Mode, type ResumeItem } from '../transport/messages.js';
import type { Connection, Transport } from '../transport/types.js';
import { defaultEnv, every, type Env } from './env.js';
import { FileKeptIds, MemoryKeptIds, type KeptHandle, type KeptIds } from './kept.js';

export interface NodeAgentOptions {
  id: string;
  /** Replica addresses, tried in order; a lost replica fails over to the next. */
  replicas: string[];
  transport: Transport;
  secret: string;
  /** Where the node keeps its applications' requestIds. Without it they live in memory only. */
  dataDir?: string;
  kept?: KeptIds;
  env?: Partial<Env>;
  heartbeatIntervalMs?: number;
  heartbeatTimeoutMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  unavailableFailoverMs?: number;
  connectTimeoutMs?: number;
  /** A request unanswered this long drops the session (default 4 heartbeat intervals). */
  requestTimeoutMs?: number;
}

/** What the agent tells the owner of a handle (the application's handle machine). */
export interface HandleListener {
  paused(): void;
  resuming(): void;
  granted(): void;
  /** The resume was denied. */
  denied(reason: InvalidationReason): void;
  /** The storage took an active handle away. */
  revoked(reason: InvalidationReason): void;
}

export type Op =
  | { kind: 'write'; seq: number; offset: number; data: Uint8Array; resolve: (v: { version: number }) => void; reject: (e: Error) => void }
  | { kind: 'read'; offset: number; length: number; resolve: (v: { data: Uint8Array; version: number }) => void; reject: (e: Error) => void };

const EMPTY = new Uint8Array(0);
/** A resume batch's size limits, well inside the codec's header limit for the request and its answer. */
const RESUME_BATCH = 1000;
const RESUME_BATCH_BYTES = 128 * 1024;
/** JSON punctuation, field names, mode and version of one resume item (or its answer), at most. */
const RESUME_ITEM_OVERHEAD = 128;
const noop = () => {};

type HandleState = 'opening' | 'active' | 'paused' | 'resuming' | 'gone';

export interface AgentHandle {
  app: string;
  target: string;
  requestId: string;
  principal: string;
  mode: Mode;
  /** `open` asks for a fresh grant; `resume` reclaims a requestId that may already hold the target. */
  how: 'open' | 'resume';
  /** This handle instance (kept with the requestId, so a restarted agent resumes as the same instance). */
  instance: string;
  /** Take the record over from another instance of the requestId (until the first grant). */
  takeover: boolean;
  state: HandleState;
  version: number;
  nextSeq: number;
  /** Operations not yet answered, in issue order; replayed after a resume. */
  ops: Op[];
  listener: HandleListener;
  settleOpen?: { resolve: () => void; reject: (e: Error) => void } | undefined;
  settleClose?: (() => void) | undefined;
}

interface Pending {
  handle: AgentHandle;
  kind: 'open' | 'resume-open' | 'op' | 'close';
  op?: Op;
  sentMs: number;
}

export class NodeAgent {
  readonly id: string;
  readonly kept: KeptIds;
  private readonly env: Env;
  private readonly opts: NodeAgentOptions;
  private readonly session: Actor<typeof nodeSessionMachine>;
  private conn: Connection | undefined;
  private readonly handles = new Map<string, AgentHandle>();
  private readonly inflight = new Map<number, Pending>();
  private readonly resumeBatches = new Map<number, { handles: AgentHandle[]; sentMs: number }>();
  private stopWatchdog: (() => void) | undefined;
  private nextId = 1;
  private resumeScheduled = false;
  private started = false;
  private stopped = false;
  private startWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  constructor(opts: NodeAgentOptions) {
    if (opts.replicas.length === 0) throw new SafeResumeError('INVALID_ARGUMENT', 'a node agent needs at least one replica address');
    this.opts = opts;
    this.id = opts.id;
    this.env = defaultEnv(opts.env);
    this.env.log = this.env.log.child({ actor: opts.id });
    this.kept = opts.kept ?? (opts.dataDir ? new FileKeptIds(opts.dataDir, opts.id) : new MemoryKeptIds());
    const random = this.env.random;
    const machine = nodeSessionMachine.provide({
      actors: { connect: fromPromise<Connected, { url: string }>(({ input }) => this.connect(input.url)) },
      actions: {
        sendPing: () => void this.conn?.send({ type: 'ping', t: this.env.clock.now() }),
        pauseHandles: () => this.pauseAll(),
        resumeHandles: () => this.scheduleResume(),
        dropConnection: () => this.dropConnection(),
      },
      delays: {
        backoff: ({ context }) => {
          if (context.attempt <= 1) return 0;
          const base = Math.min(context.backoffMaxMs, context.backoffBaseMs * 2 ** Math.min(20, context.attempt - 2));
          return Math.round(base * (0.5 + random() / 2));
        },
      },
    });
    this.session = createActor(machine, {
      clock: this.env.clock,
      inspect: this.env.inspect,
      input: {
        replicas: opts.replicas,
        heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 1000,
        heartbeatTimeoutMs: opts.heartbeatTimeoutMs ?? 1000,
        backoffBaseMs: opts.backoffBaseMs ?? 100,
        backoffMaxMs: opts.backoffMaxMs ?? 2000,
        unavailableFailoverMs: opts.unavailableFailoverMs ?? 10_000,
      },
    });
    this.session.subscribe((snap) => {
      if (snap.matches('connected')) this.settleStart();
      else if (snap.matches('reconnecting') && snap.context.lastError?.startsWith('AUTH_FAILED')) this.settleStart(new SafeResumeError('AUTH_FAILED', snap.context.lastError));
    });
  }

  /** Start the session. Resolves once connected; rejects if the storage refuses this node's secret. */
  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.startWaiters.push({ resolve, reject });
      if (!this.started) {
        this.started = true;
        this.session.start();
        this.stopWatchdog = every(this.env.clock, this.heartbeatIntervalMs, () => this.checkRequests());
      } else if (this.session.getSnapshot().matches('connected')) this.settleStart();
    });
  }

  /**
   * A request unanswered for too long means the session lost frames: drop it, reconnect, resume and
   * replay. Requests are kept in send order, so only the oldest needs a look.
   */
  private checkRequests(): void {
    const limit = this.env.clock.now() - (this.opts.requestTimeoutMs ?? 4 * this.heartbeatIntervalMs);
    const oldest = Math.min(this.inflight.values().next().value?.sentMs ?? Infinity, this.resumeBatches.values().next().value?.sentMs ?? Infinity);
    if (oldest < limit && this.conn) this.session.send({ type: 'SOCKET_CLOSED', reason: 'request timeout' });
  }

  private get heartbeatIntervalMs(): number {
    return this.opts.heartbeatIntervalMs ?? 1000;
  }

  private settleStart(err?: Error): void {
    const waiters = this.startWaiters;
    this.startWaiters = [];
    for (const w of waiters) (err ? w.reject(err) : w.resolve());
  }

  /** Stop as a crash would: drop the connection, close nothing. Kept requestIds stay on disk. */
  crash(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stopWatchdog?.();
    this.session.send({ type: 'STOP' });
    this.session.stop();
    for (const h of this.handles.values()) h.state = 'gone';
    this.handles.clear();
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

  /** Open (or, with how='resume', reclaim) a handle. Resolves when granted. */
  open(h: Omit<AgentHandle, 'state' | 'ops' | 'nextSeq' | 'settleOpen' | 'settleClose'>): Promise<AgentHandle> {
    if (this.stopped) return Promise.reject(new SafeResumeError('CLOSED', `node agent ${this.id} is stopped`));
    const handle: AgentHandle = { ...h, state: 'opening', ops: [], nextSeq: 1 };
    if (this.handles.has(h.requestId)) return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', `requestId ${h.requestId} is already open on ${this.id}`));
    this.handles.set(h.requestId, handle);
    return new Promise((resolve, reject) => {
      handle.settleOpen = { resolve: () => resolve(handle), reject };
      this.sendOpen(handle);
    });
  }

  submit(handle: AgentHandle, op: Op): void {
    handle.ops.push(op);
    if (handle.state === 'active') this.sendOp(handle, op);
  }

  /** Assign the next write sequence number of a handle. */
  nextSeq(handle: AgentHandle): number {
    return handle.nextSeq++;
  }

  /**
   * Reject every operation of a handle that lives on (fail-fast handles while paused). Each rejected
   * write's sequence number is kept by an empty write in its place, so the write either was applied
   * before the failure or never will be.
   */
  failOps(handle: AgentHandle, code: ErrorCode, message: string): void {
    const ops = handle.ops;
    handle.ops = [];
    for (const [id, p] of this.inflight) if (p.handle === handle && p.kind === 'op') this.inflight.delete(id);
    for (const op of ops) {
      op.reject(new SafeResumeError(code, message));
      if (op.kind === 'write') handle.ops.push({ kind: 'write', seq: op.seq, offset: 0, data: EMPTY, resolve: noop, reject: noop });
    }
  }

  /** Reject every operation of a handle that is gone. */
  private dropOps(handle: AgentHandle, code: ErrorCode, message: string): void {
    const ops = handle.ops;
    handle.ops = [];
    for (const op of ops) op.reject(new SafeResumeError(code, message));
  }

  close(handle: AgentHandle): Promise<void> {
    if (handle.state === 'gone') return Promise.resolve();
    this.kept.remove(handle.requestId);
    if (handle.state !== 'active' || !this.conn?.isOpen) {
      // The record stays until another writer takes the target after the hold period.
      this.abandon(handle, 'CLOSED', `${handle.target}: handle closed`);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      handle.settleClose = resolve;
      const id = this.nextId++;
      this.inflight.set(id, { handle, kind: 'close', sentMs: this.env.clock.now() });
      this.conn!.send({ type: 'close', id, target: handle.target, requestId: handle.requestId });
    });
  }

  /** The application process is gone: drop its handle without a word to the storage. */
  forgetQuietly(handle: AgentHandle): void {
    if (handle.state === 'gone') return;
    this.kept.remove(handle.requestId);
    this.forget(handle);
    handle.ops = [];
  }

  /** The application gave up on the handle (closed while away, or its pause timed out). */
  abandon(handle: AgentHandle, code: ErrorCode, message: string): void {
    if (handle.state === 'gone') return;
    this.kept.remove(handle.requestId);
    this.forget(handle);
    this.dropOps(handle, code, message);
  }

  // ---- Session plumbing ----

  private async connect(url: string): Promise<Connected> {
    const conn = await this.opts.transport.connect(url, { timeoutMs: this.opts.connectTimeoutMs ?? 2000 });
    return new Promise<Connected>((resolve, reject) => {
      const timer = this.env.clock.setTimeout(() => {
        conn.terminate();
        reject(new Error(`no welcome from ${url}`));
      }, this.opts.connectTimeoutMs ?? 2000);
      let welcomed = false;
      conn.onClose((info) => {
        this.env.clock.clearTimeout(timer);
        if (!welcomed) reject(new Error(`${url} closed the connection: ${info.reason || info.code}`));
        else if (this.conn === conn) this.session.send({ type: 'SOCKET_CLOSED', reason: info.reason || `closed (${info.code})` });
      });
      conn.onFrame((frame) => {
        if (welcomed) {
          if (this.conn === conn) this.onFrame(frame.ok ? frame.msg : undefined, frame.ok ? undefined : frame);
          return;
        }
        if (frame.ok && frame.msg.type === 'welcome') {
          if (this.stopped) {
            reject(new SafeResumeError('CLOSED', `node agent ${this.id} is stopped`));
            return conn.terminate();
          }
          welcomed = true;
          this.env.clock.clearTimeout(timer);
          this.conn = conn;
          resolve({ session: frame.msg.session, replica: frame.msg.replica });
        } else if (frame.ok && frame.msg.type === 'error') {
          this.env.clock.clearTimeout(timer);
          reject(new SafeResumeError(isErrorCode(frame.msg.code) ? frame.msg.code : 'INTERNAL', `${frame.msg.code}: ${frame.msg.message}`));
          conn.terminate();
        }
      });
      conn.send({ type: 'hello', v: PROTOCOL_VERSION, secret: this.opts.secret, node: this.id });
    });
  }

  /** Requests in flight are settled by `pauseAll`, which the machine runs right after this. */
  private dropConnection(): void {
    const conn = this.conn;
    this.conn = undefined;
    conn?.terminate();
  }

  private pauseAll(): void {
    // A close in flight is done as far as the application is concerned: the lock lapses after the hold.
    const closing = [...this.inflight.values()].filter((p) => p.kind === 'close');
    for (const p of closing) this.abandon(p.handle, 'CLOSED', `${p.handle.target}: handle closed`);
    this.inflight.clear();
    this.resumeBatches.clear();
    let paused = 0;
    for (const h of this.handles.values()) if (this.pause(h)) paused++;
    if (paused > 0) this.env.log.info({ handles: paused }, 'handles paused');
  }

  /** Pause one handle; true if it was running. (Logged per handle at debug level: a failover pauses thousands.) */
  private pause(h: AgentHandle): boolean {
    if (h.state !== 'active' && h.state !== 'resuming') return false;
    this.env.log.debug({ app: h.app, target: h.target, requestId: h.requestId }, 'handle paused');
    h.state = 'paused';
    h.listener.paused();
    return true;
  }

  private get storageReady(): boolean {
    return this.conn?.isOpen === true && this.session.getSnapshot().matches({ connected: { storage: 'available' } });
  }

  /** Collect resumes over one turn, then send one batch for all paused and opening handles. */
  private scheduleResume(): void {
    if (this.resumeScheduled) return;
    this.resumeScheduled = true;
    queueMicrotask(() => {
      this.resumeScheduled = false;
      if (!this.storageReady) return;
      const batch: AgentHandle[] = [];
      const asked = new Set<AgentHandle>();
      for (const p of this.inflight.values()) if (p.kind === 'open' || p.kind === 'resume-open') asked.add(p.handle);
      for (const h of this.handles.values()) {
        if (h.state === 'paused') batch.push(h);
        else if (h.state === 'opening' && !asked.has(h)) this.sendOpen(h);
      }
      this.sendResumes(batch);
    });
  }

  /**
   * Send resumes in batches that fit a frame: at most RESUME_BATCH items and about
   * RESUME_BATCH_BYTES of header each way (the answers repeat each target and requestId).
   */
  private sendResumes(handles: AgentHandle[]): void {
    let batch: AgentHandle[] = [];
    let items: ResumeItem[] = [];
    let bytes = 0;
    for (const h of handles) {
      const item = this.resumeItem(h);
      const size = RESUME_ITEM_OVERHEAD + h.target.length + h.requestId.length + h.principal.length + h.instance.length;
      if (batch.length > 0 && (batch.length >= RESUME_BATCH || bytes + size > RESUME_BATCH_BYTES)) {
        this.sendResume(batch, items);
        batch = [];
        items = [];
        bytes = 0;
      }
      batch.push(h);
      items.push(item);
      bytes += size;
    }
    if (batch.length > 0) this.sendResume(batch, items);
  }

  private resumeItem(h: AgentHandle): ResumeItem {
    const item: ResumeItem = { target: h.target, requestId: h.requestId, principal: h.principal, mode: h.mode };
    if (h.mode === 'read') item.version = h.version;
    else {
      item.instance = h.instance;
      if (h.takeover) item.takeover = true;
    }
    return item;
  }

  private sendResume(batch: AgentHandle[], items: ResumeItem[]): void {
    const id = this.nextId++;
    for (const h of batch) {
      h.state = 'resuming';
      h.listener.resuming();
    }
    this.resumeBatches.set(id, { handles: batch, sentMs: this.env.clock.now() });
    this.conn!.send({ type: 'resume', id, items });
  }

  private sendOpen(h: AgentHandle): void {
    if (!this.storageReady) return; // sent by the next resume round
    const id = this.nextId++;
    if (h.how === 'open') {
      this.inflight.set(id, { handle: h, kind: 'open', sentMs: this.env.clock.now() });
      this.conn!.send({ type: 'open', id, target: h.target, requestId: h.requestId, principal: h.principal, mode: h.mode, instance: h.instance });
    } else {
      this.inflight.set(id, { handle: h, kind: 'resume-open', sentMs: this.env.clock.now() });
      this.conn!.send({ type: 'resume', id, items: [this.resumeItem(h)] });
    }
  }

  private sendOp(h: AgentHandle, op: Op): void {
    if (!this.storageReady) return; // replayed after the resume
    const id = this.nextId++;
    this.inflight.set(id, { handle: h, kind: 'op', op, sentMs: this.env.clock.now() });
    if (op.kind === 'write') {
      this.conn!.send({ type: 'write', id, target: h.target, requestId: h.requestId, seq: op.seq, offset: op.offset, data: op.data });
    } else {
      this.conn!.send({ type: 'read', id, target: h.target, requestId: h.requestId, offset: op.offset, length: op.length });
    }
  }

  private onFrame(msg: Message | undefined, bad?: { code: string; message: string }): void {
    if (!msg) {
      this.env.log.warn({ code: bad?.code, message: bad?.message }, 'bad frame from replica');
      return;
    }
    switch (msg.type) {
      case 'pong':
        this.session.send({ type: 'HEARD' });
        return;
      case 'notice':
        this.session.send({ type: msg.kind === 'unavailable' ? 'STORAGE_UNAVAILABLE' : 'STORAGE_AVAILABLE' });
        return;
      case 'revoked': {
        const h = this.handles.get(msg.requestId);
        if (h && h.target === msg.target) this.invalidate(h, msg.reason);
        return;
      }
      case 'opened':
        return this.onOpened(msg);
      case 'resumed':
        return this.onResumed(msg);
      case 'written':
      case 'data':
        return this.onOpDone(msg);
      case 'closed': {
        const p = this.inflight.get(msg.id);
        this.inflight.delete(msg.id);
        if (p) this.forget(p.handle);
        return;
      }
      case 'error':
        return this.onError(msg);
      default:
        this.env.log.warn({ type: msg.type }, 'unexpected message from replica');
    }
  }

  private onOpened(msg: MessageOf<'opened'>): void {
    const p = this.inflight.get(msg.id);
    this.inflight.delete(msg.id);
    if (!p || p.handle.state !== 'opening') return;
    this.granted(p.handle, msg.lastSeq, msg.version);
    this.keep([p.handle]);
  }

  /** Write the requestIds and sessions of freshly granted handles to the node-local file, at once. */
  private keep(hs: AgentHandle[]): void {
    this.kept.putMany(
      hs
        .filter((h) => h.state === 'active')
        .map((h) => ({ app: h.app, target: h.target, requestId: h.requestId, principal: h.principal, mode: h.mode, version: h.version, instance: h.instance })),
    );
  }

  private granted(h: AgentHandle, lastSeq: number, version: number): void {
    const wasOpening = h.state === 'opening';
    h.state = 'active';
    h.version = version;
    h.takeover = false;
    if (wasOpening) {
      const settle = h.settleOpen;
      h.settleOpen = undefined;
      settle?.resolve();
    }
    // Writes the store already applied before the failure are acknowledged; the rest are replayed in
    // order with the sequence numbers they were first sent with, so a late copy of an old frame can
    // never be applied as a different write.
    const ops = h.ops;
    h.ops = [];
    for (const op of ops) {
      if (op.kind === 'write' && op.seq <= lastSeq) op.resolve({ version });
      else h.ops.push(op);
    }
    h.nextSeq = Math.max(h.nextSeq, lastSeq + 1);
    // Replay first: the application's queued operations, flushed when it hears of the grant, follow.
    for (const op of h.ops) this.sendOp(h, op);
    if (!wasOpening) {
      this.env.log.debug({ app: h.app, target: h.target, requestId: h.requestId, lastSeq, replayed: h.ops.length }, 'handle resumed');
      h.listener.granted();
    }
  }

  private onResumed(msg: MessageOf<'resumed'>): void {
    const batch = this.resumeBatches.get(msg.id);
    this.resumeBatches.delete(msg.id);
    const single = this.inflight.get(msg.id);
    this.inflight.delete(msg.id);
    const handles = batch?.handles ?? (single ? [single.handle] : []);
    const grantedNow: AgentHandle[] = [];
    msg.results.forEach((r, i) => {
      const h = handles[i];
      // A handle paused again after this resume was sent waits for the next round.
      if (!h || h.requestId !== r.requestId || (h.state !== 'resuming' && h.state !== 'opening')) return;
      if (r.granted) {
        grantedNow.push(h);
        return this.granted(h, r.lastSeq ?? 0, r.version);
      }
      if (h.state === 'opening') return this.failOpen(h, new SafeResumeError(r.code === 'FORBIDDEN' ? 'FORBIDDEN' : (r.reason ?? 'MODIFIED'), `resume of ${h.target} denied: ${r.reason ?? r.code}`));
      this.invalidate(h, r.reason ?? 'MODIFIED');
    });
    this.keep(grantedNow);
    if (batch) this.env.log.info({ replica: this.replica, granted: grantedNow.length, of: handles.length }, 'handles resumed');
  }

  private onOpDone(msg: MessageOf<'written'> | MessageOf<'data'>): void {
    const p = this.inflight.get(msg.id);
    this.inflight.delete(msg.id);
    if (!p?.op) return;
    const h = p.handle;
    const i = h.ops.indexOf(p.op);
    if (i < 0) return;
    h.ops.splice(i, 1);
    if (msg.type === 'written' && p.op.kind === 'write') p.op.resolve({ version: msg.version });
    else if (msg.type === 'data' && p.op.kind === 'read') {
      h.version = msg.version;
      p.op.resolve({ data: msg.data, version: msg.version });
    }
  }

  private onError(msg: MessageOf<'error'>): void {
    const p = msg.id === undefined ? undefined : this.inflight.get(msg.id);
    const batch = msg.id === undefined ? undefined : this.resumeBatches.get(msg.id);
    if (msg.id !== undefined) {
      this.inflight.delete(msg.id);
      this.resumeBatches.delete(msg.id);
    }
    const code: ErrorCode = isErrorCode(msg.code) ? msg.code : 'INTERNAL';
    if (batch) {
      // The whole resume failed (e.g. the store went away): the handles wait for the next round.
      for (const h of batch.handles) if (h.state === 'resuming') this.pause(h);
      if (this.storageReady) this.retryLater();
      return;
    }
    if (!p) {
      this.env.log.warn({ code, message: msg.message }, 'error from replica');
      return;
    }
    const h = p.handle;
    if ((p.kind === 'open' || p.kind === 'resume-open') && code !== 'UNAVAILABLE') {
      // LOCKED is retryable for the application (wait and retry), not something to retry blindly here.
      return this.failOpen(h, new SafeResumeError(code, msg.message));
    }
    if (msg.retryable) {
      // Keep the operation; the handle pauses and is resumed (and the operation replayed) next round.
      if (h.state === 'active' || h.state === 'resuming') this.pause(h);
      if (this.storageReady) this.retryLater();
      return;
    }
    if (p.kind === 'close') return this.forget(h);
    if (code === 'MODIFIED' || code === 'SUPERSEDED') return this.invalidate(h, code);
    // The storage no longer knows this handle on this session: it was closed on the storage side.
    if (code === 'NOT_OPEN') return this.invalidate(h, 'CLOSED_BY_STORAGE');
    if (p.op) {
      const i = h.ops.indexOf(p.op);
      if (i >= 0) h.ops.splice(i, 1);
      p.op.reject(new SafeResumeError(code, msg.message));
    }
  }

  private retryLater(): void {
    this.env.clock.setTimeout(() => this.scheduleResume(), this.opts.backoffBaseMs ?? 100);
  }

  private failOpen(h: AgentHandle, err: Error): void {
    const settle = h.settleOpen;
    h.settleOpen = undefined;
    if (h.how === 'resume') this.kept.remove(h.requestId);
    this.forget(h);
    settle?.reject(err);
  }

  private invalidate(h: AgentHandle, reason: InvalidationReason): void {
    const was = h.state;
    if (was === 'gone') return;
    if (was === 'opening') return this.failOpen(h, new SafeResumeError(reason, `${h.target}: ${reason}`));
    this.env.log.warn({ app: h.app, target: h.target, requestId: h.requestId, reason }, 'handle invalidated');
    this.abandon(h, reason, `handle on ${h.target} invalidated: ${reason}`);
    if (was === 'active') return h.listener.revoked(reason);
    // A paused handle's next resume would be denied: the agent already has the answer.
    if (was === 'paused') h.listener.resuming();
    h.listener.denied(reason);
  }

  private forget(h: AgentHandle): void {
    h.state = 'gone';
    if (this.handles.get(h.requestId) === h) this.handles.delete(h.requestId);
    for (const [id, p] of this.inflight) if (p.handle === h) this.inflight.delete(id);
    const close = h.settleClose;
    h.settleClose = undefined;
    close?.();
  }

  /** Handles the agent holds, for status views and tests. */
  list(): Array<Pick<AgentHandle, 'app' | 'target' | 'requestId' | 'mode' | 'state'>> {
    return [...this.handles.values()].map(({ app, target, requestId, mode, state }) => ({ app, target, requestId, mode, state }));
  }

  /** Whether a handle with this requestId is open (or being opened) on this agent. */
  holds(requestId: string): boolean {
    return this.handles.has(requestId);
  }

  findKept(app: string, target: string): KeptHandle | undefined {
    return this.kept.find(app, target);
  }
}
