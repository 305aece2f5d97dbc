/**
 * StorageReplica: a WebSocket (or in-memory) server over one store. It authenticates node agents,
 * serves their handles, renews their locks in one batch per session, starts the hold period when a
 * session is lost, and tells its sessions when its store goes away and comes back (dismount).
 */
import { createActor, type Actor } from 'xstate';
import { SafeResumeError, type ErrorCode } from '../errors.js';
import { replicaHandleMachine } from '../machines/replica-handle.js';
import type { Decoded } from '../transport/codec.js';
import { DEFAULT_HEARTBEAT_INTERVAL_MS, REPLICA_SILENCE_INTERVALS, type Message, type MessageOf, type ResumeResult } from '../transport/messages.js';
import { CLOSE, type Connection, type Listener, type Transport } from '../transport/types.js';
import { StoreUnavailableError, type HandleRef, type Store } from '../store/types.js';
import { defaultEnv, every, handleHolder, type Env, type HandleHolder } from './env.js';
import { secretMatches } from './auth.js';

export interface ReplicaOptions {
  id: string;
  store: Store;
  transport: Transport;
  secret: string;
  env?: Partial<Env>;
  host?: string;
  port?: number;
  /** How long a writer's lock outlives its lost session. May be 0. */
  holdMs?: number;
  /** How long a renewed lock stays live without the next renewal (covers a crashed replica). */
  leaseMs?: number;
  renewIntervalMs?: number;
  /** Advertised to agents in `welcome` (they adopt it); a session silent for REPLICA_SILENCE_INTERVALS is dropped. */
  heartbeatIntervalMs?: number;
  helloTimeoutMs?: number;
  /** While dismounted, how often to probe an unavailable store. */
  probeIntervalMs?: number;
  maxHandlesPerSession?: number;
  maxBadFrames?: number;
}

type HandleActor = Actor<typeof replicaHandleMachine>;

interface Session {
  id: string;
  node: string;
  conn: Connection;
  handles: Map<string, HandleActor>;
  lastHeardMs: number;
  badFrames: number;
  /** Recent request ids, to drop duplicates. */
  seen: Set<number>;
}

const SEEN_WINDOW = 4096;

export interface ReplicaHandleView {
  target: string;
  requestId: string;
  mode: 'read' | 'write';
  session: string;
  node: string;
  state: string;
}

const keyOf = (target: string, requestId: string) => `${target}\u0000${requestId}`;

export class StorageReplica {
  readonly id: string;
  readonly store: Store;
  readonly holdMs: number;
  readonly leaseMs: number;
  readonly heartbeatIntervalMs: number;
  private readonly env: Env;
  private readonly holder: HandleHolder;
  private readonly opts: ReplicaOptions;
  private listener: Listener | undefined;
  private readonly sessions = new Map<string, Session>();
  private readonly pending = new Set<Connection>();
  /** Handles of lost sessions, in their hold period, until resumed here or released. */
  private readonly orphans = new Map<string, HandleActor>();
  private stopTimers: Array<() => void> = [];
  private dismounted: 'no' | 'manual' | 'auto' = 'no';
  /** Counters for status views, tests and benchmarks. */
  readonly stats = { sessions: 0, resumeMessages: 0, resumesGranted: 0, resumesDenied: 0, writesApplied: 0, badFrames: 0 };
  private stopped = false;

  constructor(opts: ReplicaOptions) {
    this.opts = opts;
    this.id = opts.id;
    this.store = opts.store;
    this.env = defaultEnv(opts.env);
    this.holder = handleHolder(this.env);
    this.env.log = this.env.log.child({ actor: opts.id });
    this.holdMs = opts.holdMs ?? 5000;
    this.leaseMs = opts.leaseMs ?? 3000;
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
  }

  get url(): string {
    if (!this.listener) throw new Error(`${this.id} is not listening`);
    return this.listener.url;
  }

  get isDismounted(): boolean {
    return this.dismounted !== 'no';
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  async start(): Promise<this> {
    const listenOpts: { host?: string; port?: number; name: string } = { name: this.id };
    if (this.opts.host !== undefined) listenOpts.host = this.opts.host;
    if (this.opts.port !== undefined) listenOpts.port = this.opts.port;
    this.listener = await this.opts.transport.listen(listenOpts);
    this.listener.onConnection((conn) => this.accept(conn));
    const { clock } = this.env;
    this.stopTimers.push(every(clock, this.opts.renewIntervalMs ?? Math.max(1, Math.floor(this.leaseMs / 3)), () => void this.renewAll()));
    this.stopTimers.push(every(clock, this.heartbeatIntervalMs, () => this.reapSilent()));
    this.env.log.info({ url: this.listener.url, store: this.store.kind, holdMs: this.holdMs }, 'replica listening');
    return this;
  }

  /** Stop serving: every connection is dropped as in a crash; locks keep their hold period. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const stop of this.stopTimers) stop();
    this.stopTimers = [];
    for (const s of [...this.sessions.values()]) this.loseSession(s, 'replica stopping', false);
    for (const a of this.orphans.values()) this.holder.stop(a);
    this.orphans.clear();
    await this.listener?.close();
  }

  /** Operator control: the store counts as unavailable until `mount()`. */
  dismount(): void {
    this.enterDismounted('manual');
  }

  mount(): void {
    if (this.dismounted === 'no') return;
    this.dismounted = 'no';
    this.env.log.warn('store available again: mounted');
    this.broadcast({ type: 'notice', kind: 'available' });
  }

  handles(): ReplicaHandleView[] {
    const out: ReplicaHandleView[] = [];
    for (const s of this.sessions.values()) {
      for (const a of s.handles.values()) out.push(view(a, s.node));
    }
    for (const a of this.orphans.values()) out.push(view(a, ''));
    return out;
  }

  private accept(conn: Connection): void {
    this.pending.add(conn);
    const timer = this.env.clock.setTimeout(() => {
      if (this.pending.delete(conn)) conn.close(CLOSE.AUTH_FAILED, 'no hello');
    }, this.opts.helloTimeoutMs ?? 5000);
    let session: Session | undefined;
    conn.onClose(() => {
      this.pending.delete(conn);
      this.env.clock.clearTimeout(timer);
      if (session) this.loseSession(session, 'connection closed', true);
    });
    conn.onFrame((frame) => {
      if (session) {
        session.lastHeardMs = this.env.clock.now();
        this.onFrame(session, frame);
        return;
      }
      session = this.handshake(conn, frame);
      if (session) this.env.clock.clearTimeout(timer);
    });
  }

  private handshake(conn: Connection, frame: Decoded): Session | undefined {
    if (!frame.ok || frame.msg.type !== 'hello') {
      this.reply(conn, undefined, 'AUTH_FAILED', 'the first message must be hello with the cluster secret');
      conn.close(CLOSE.AUTH_FAILED, 'expected hello');
      return undefined;
    }
    if (!secretMatches(this.opts.secret, frame.msg.secret)) {
      this.env.log.warn({ node: frame.msg.node }, 'refused a peer with the wrong cluster secret');
      this.reply(conn, undefined, 'AUTH_FAILED', 'wrong cluster secret');
      conn.close(CLOSE.AUTH_FAILED, 'wrong cluster secret');
      return undefined;
    }
    this.pending.delete(conn);
    const session: Session = { id: this.env.newId(), node: frame.msg.node, conn, handles: new Map(), lastHeardMs: this.env.clock.now(), badFrames: 0, seen: new Set() };
    this.sessions.set(session.id, session);
    this.stats.sessions++;
    conn.send({ type: 'welcome', session: session.id, replica: this.id, heartbeatIntervalMs: this.heartbeatIntervalMs });
    if (this.dismounted !== 'no') conn.send({ type: 'notice', kind: 'unavailable' });
    this.env.log.info({ session: session.id, node: session.node }, 'session opened');
    return session;
  }

  private onFrame(s: Session, frame: Decoded): void {
    if (!frame.ok) {
      this.stats.badFrames++;
      this.env.log.warn({ session: s.id, node: s.node, code: frame.code, message: frame.message }, 'bad frame');
      this.reply(s.conn, frame.id, frame.code, frame.message);
      if (++s.badFrames >= (this.opts.maxBadFrames ?? 100)) s.conn.close(CLOSE.PROTOCOL, 'too many bad frames');
      return;
    }
    const msg = frame.msg;
    if ('id' in msg && msg.id !== undefined && msg.type !== 'error') {
      // A request is handled once per session, even if the network delivers it twice.
      if (s.seen.has(msg.id)) return;
      s.seen.add(msg.id);
      if (s.seen.size > SEEN_WINDOW) s.seen.delete(s.seen.values().next().value!);
    }
    switch (msg.type) {
      case 'ping':
        s.conn.send({ type: 'pong', t: msg.t });
        return;
      case 'open':
        return void this.guard(s, msg.id, this.onOpen(s, msg));
      case 'resume':
        return void this.guard(s, msg.id, this.onResume(s, msg));
      case 'write':
        return void this.guard(s, msg.id, this.onWrite(s, msg));
      case 'read':
        return void this.guard(s, msg.id, this.onRead(s, msg));
      case 'close':
        return void this.guard(s, msg.id, this.onClose(s, msg));
      default:
        this.reply(s.conn, 'id' in msg ? msg.id : undefined, 'BAD_FRAME', `a replica does not accept ${msg.type}`);
    }
  }

  /** Turn a failed request into an error reply; a store outage dismounts the replica. */
  private async guard(s: Session, id: number, work: Promise<void>): Promise<void> {
    try {
      await work;
    } catch (err) {
      if (err instanceof StoreUnavailableError) {
        this.enterDismounted('auto');
        this.reply(s.conn, id, 'UNAVAILABLE', err.message);
      } else if (err instanceof SafeResumeError) {
        this.reply(s.conn, id, err.code, err.message);
      } else {
        this.env.log.error({ err, session: s.id }, 'request failed');
        this.reply(s.conn, id, 'INTERNAL', 'internal error; see the replica log');
      }
    }
  }

  private reply(conn: Connection, id: number | undefined, code: ErrorCode, message: string, lastSeq?: number): void {
    const err: Message = { type: 'error', code, message, retryable: new SafeResumeError(code).retryable };
    if (id !== undefined) err.id = id;
    if (lastSeq !== undefined) err.lastSeq = lastSeq;
    conn.send(err);
  }

  private checkMounted(): void {
    if (this.dismounted !== 'no') throw new SafeResumeError('UNAVAILABLE', `${this.id}: store dismounted`);
  }

  private expiresAt(): number {
    return this.env.clock.now() + this.leaseMs + this.holdMs;
  }

  private async onOpen(s: Session, msg: MessageOf<'open'>): Promise<void> {
    this.checkMounted();
    if (s.handles.size >= (this.opts.maxHandlesPerSession ?? 100_000)) throw new SafeResumeError('INVALID_ARGUMENT', 'too many handles on this session');
    const now = this.env.clock.now();
    const res = await this.store.open({ target: msg.target, requestId: msg.requestId, principal: msg.principal, mode: msg.mode, session: s.id, expiresAt: this.expiresAt(), instance: msg.instance }, now);
    if (!res.ok) throw new SafeResumeError(res.code, res.message);
    tell(this.attach(s, msg.target, msg.requestId, msg.mode, false), { type: 'GRANTED' });
    s.conn.send({ type: 'opened', id: msg.id, version: res.version, lastSeq: res.lastSeq });
  }

  private async onResume(s: Session, msg: MessageOf<'resume'>): Promise<void> {
    this.checkMounted();
    const expiresAt = this.expiresAt();
    this.stats.resumeMessages++;
    const outcomes = await this.store.resume(
      msg.items.map((it) => ({ ...it, session: s.id, expiresAt })),
    );
    const results: ResumeResult[] = msg.items.map((it, i) => {
      const out = outcomes[i]!;
      const actor = this.attach(s, it.target, it.requestId, it.mode, true);
      if (out.granted) {
        this.stats.resumesGranted++;
        tell(actor, { type: 'GRANTED' });
        return { target: it.target, requestId: it.requestId, granted: true, lastSeq: out.lastSeq, version: out.version };
      }
      this.stats.resumesDenied++;
      this.env.log.info({ target: it.target, requestId: it.requestId, reason: out.reason, session: s.id }, 'resume denied');
      tell(actor, { type: 'DENIED', reason: out.reason });
      this.detach(s, it.target, it.requestId);
      const denied: ResumeResult = { target: it.target, requestId: it.requestId, granted: false, reason: out.reason, code: out.code, version: out.version };
      if (out.lastSeq !== undefined) denied.lastSeq = out.lastSeq;
      return denied;
    });
    s.conn.send({ type: 'resumed', id: msg.id, results });
  }

  private handle(s: Session, target: string, requestId: string): HandleActor {
    const actor = s.handles.get(keyOf(target, requestId));
    if (!actor) throw new SafeResumeError('NOT_OPEN', `no open handle on ${target} for this requestId in this session`);
    return actor;
  }

  private async onWrite(s: Session, msg: MessageOf<'write'>): Promise<void> {
    this.checkMounted();
    const actor = this.handle(s, msg.target, msg.requestId);
    if (actor.getSnapshot().context.mode !== 'write') throw new SafeResumeError('INVALID_ARGUMENT', 'handle was opened for reading');
    const res = await this.store.write({ target: msg.target, requestId: msg.requestId, session: s.id, seq: msg.seq, offset: msg.offset, data: msg.data });
    if (res.ok) {
      if (res.applied) this.stats.writesApplied++;
      s.conn.send({ type: 'written', id: msg.id, seq: msg.seq, version: res.version });
      return;
    }
    if (res.code === 'MODIFIED' || res.code === 'SUPERSEDED') {
      tell(actor, { type: 'REVOKED', reason: res.code });
      this.detach(s, msg.target, msg.requestId);
    }
    if (res.lastSeq !== undefined) return this.reply(s.conn, msg.id, res.code, res.message, res.lastSeq);
    throw new SafeResumeError(res.code, res.message);
  }

  private async onRead(s: Session, msg: MessageOf<'read'>): Promise<void> {
    this.checkMounted();
    const actor = this.handle(s, msg.target, msg.requestId);
    const fence = actor.getSnapshot().context.mode === 'write' ? { requestId: msg.requestId, session: s.id } : undefined;
    const res = await this.store.read({ target: msg.target, offset: msg.offset, length: msg.length, fence });
    if (res.ok) {
      s.conn.send({ type: 'data', id: msg.id, version: res.version, data: res.data });
      return;
    }
    tell(actor, { type: 'REVOKED', reason: res.code });
    this.detach(s, msg.target, msg.requestId);
    throw new SafeResumeError(res.code, res.message);
  }

  private async onClose(s: Session, msg: MessageOf<'close'>): Promise<void> {
    this.checkMounted();
    const actor = s.handles.get(keyOf(msg.target, msg.requestId));
    await this.store.close({ target: msg.target, requestId: msg.requestId }, s.id);
    tell(actor, { type: 'CLOSE' });
    this.detach(s, msg.target, msg.requestId);
    s.conn.send({ type: 'closed', id: msg.id });
  }

  /** The handle's actor on this session: an orphan of a lost session resumed here, or a new one. */
  private attach(s: Session, target: string, requestId: string, mode: 'read' | 'write', resume: boolean): HandleActor {
    const key = keyOf(target, requestId);
    const existing = s.handles.get(key);
    if (existing?.getSnapshot().status === 'active') {
      tell(existing, { type: 'RESUME', session: s.id });
      return existing;
    }
    this.holder.stop(existing);
    const orphan = this.orphans.get(key);
    if (orphan && resume && orphan.getSnapshot().value === 'paused') {
      this.orphans.delete(key);
      tell(orphan, { type: 'RESUME', session: s.id });
      s.handles.set(key, orphan);
      return orphan;
    }
    this.holder.stop(orphan);
    this.orphans.delete(key);
    const actor = createActor(replicaHandleMachine, {
      parent: this.holder.parent,
      input: { target, requestId, mode, session: s.id, holdMs: this.holdMs, resume },
    }).start();
    s.handles.set(key, actor);
    return actor;
  }

  private detach(s: Session, target: string, requestId: string): void {
    const key = keyOf(target, requestId);
    this.holder.stop(s.handles.get(key));
    s.handles.delete(key);
  }

  private loseSession(s: Session, why: string, keepOrphans: boolean): void {
    if (!this.sessions.delete(s.id)) return;
    this.env.log.info({ session: s.id, node: s.node, handles: s.handles.size, why }, 'session lost');
    s.conn.terminate();
    const held: HandleRef[] = [];
    for (const [key, actor] of s.handles) {
      const { target, requestId, mode } = actor.getSnapshot().context;
      if (mode === 'write') held.push({ target, requestId });
      tell(actor, { type: 'SESSION_LOST' });
      if (keepOrphans && actor.getSnapshot().status === 'active') {
        this.holder.stop(this.orphans.get(key));
        this.orphans.set(key, actor);
        actor.subscribe({ complete: () => this.orphans.get(key) === actor && this.orphans.delete(key) });
      } else this.holder.stop(actor);
    }
    s.handles.clear();
    // The hold period starts now: the lock lasts holdMs more, then lapses.
    if (held.length > 0 && this.dismounted === 'no') {
      this.store.renew(s.id, held, this.env.clock.now() + this.holdMs).catch((err: unknown) => {
        this.env.log.warn({ err: String(err), session: s.id }, 'could not start the hold period; locks lapse at their lease');
      });
    }
  }

  private reapSilent(): void {
    const deadline = this.env.clock.now() - REPLICA_SILENCE_INTERVALS * this.heartbeatIntervalMs;
    for (const s of [...this.sessions.values()]) {
      if (s.lastHeardMs < deadline) this.loseSession(s, 'heartbeat timeout', true);
    }
  }

  private async renewAll(): Promise<void> {
    if (this.dismounted !== 'no') return;
    const expiresAt = this.expiresAt();
    for (const s of [...this.sessions.values()]) {
      const refs: HandleRef[] = [];
      for (const a of s.handles.values()) {
        const snap = a.getSnapshot();
        if (snap.context.mode === 'write' && snap.value === 'active') refs.push({ target: snap.context.target, requestId: snap.context.requestId });
      }
      if (refs.length === 0) continue;
      try {
        const { lost } = await this.store.renew(s.id, refs, expiresAt);
        for (const l of lost) {
          const actor = s.handles.get(keyOf(l.target, l.requestId));
          if (!actor) continue;
          tell(actor, { type: 'REVOKED', reason: l.reason });
          this.detach(s, l.target, l.requestId);
          s.conn.send({ type: 'revoked', target: l.target, requestId: l.requestId, reason: l.reason, ...(l.lastSeq !== undefined ? { lastSeq: l.lastSeq } : {}) });
        }
      } catch (err) {
        if (err instanceof StoreUnavailableError) return this.enterDismounted('auto');
        this.env.log.error({ err }, 'renewal failed');
      }
    }
  }

  private enterDismounted(kind: 'manual' | 'auto'): void {
    if (this.dismounted !== 'no') {
      if (kind === 'manual') this.dismounted = 'manual';
      return;
    }
    this.dismounted = kind;
    this.env.log.warn({ kind }, 'store unavailable: dismounted');
    for (const s of this.sessions.values()) for (const a of s.handles.values()) tell(a, { type: 'STORE_UNAVAILABLE' });
    this.broadcast({ type: 'notice', kind: 'unavailable' });
    if (kind === 'auto') this.probe();
  }

  private probe(): void {
    const retry = () => {
      if (this.stopped || this.dismounted !== 'auto') return;
      this.store.ping().then(
        () => this.dismounted === 'auto' && this.mount(),
        () => this.env.clock.setTimeout(retry, this.opts.probeIntervalMs ?? 500),
      );
    };
    this.env.clock.setTimeout(retry, this.opts.probeIntervalMs ?? 500);
  }

  private broadcast(msg: Message): void {
    for (const s of this.sessions.values()) s.conn.send(msg);
  }
}

/** Send an event to a handle's actor unless it already reached a final state. */
function tell(a: HandleActor | undefined, event: Parameters<HandleActor['send']>[0]): void {
  if (a && a.getSnapshot().status === 'active') a.send(event);
}

function view(a: HandleActor, node: string): ReplicaHandleView {
  const snap = a.getSnapshot();
  const { target, requestId, mode, session } = snap.context;
  return { target, requestId, mode, session, node, state: String(snap.value) };
}
