/**
 * StorageReplica: a WebSocket (or in-memory) server over one store. It authenticates node agents,
 * serves their handles, renews their locks in one batch per session, starts the hold period when a
 * session is lost, and tells its sessions when its store goes away and comes back (dismount).
 */
import { LogLimiter } from './log-limit.js';
import { SafeResumeError, type ErrorCode } from '../errors.js';
import type { ReplicaHandleStepEvent } from '../machines/replica-handle.js';
import type { Decoded } from '../transport/codec.js';
import { DEFAULT_HEARTBEAT_INTERVAL_MS, REPLICA_SILENCE_INTERVALS, type Message, type MessageOf, type ResumeResult } from '../transport/messages.js';
import { CLOSE, type Connection, type Listener, type Transport } from '../transport/types.js';
import { StoreUnavailableError, type HandleRef, type Store } from '../store/types.js';
import { actorLog, defaultEnv, every, type Env } from './env.js';
import { Keyring, proofMatches, proofs, sessionKey, transcript } from './auth.js';
import { pureInspector } from './pure-inspect.js';
import { HandleRecords, keyOf, view, type HandleRecord, type ReplicaHandleView } from './replica-handles.js';

export type { ReplicaHandleView };

export interface ReplicaOptions {
  id: string;
  store: Store;
  transport: Transport;
  /** The cluster key: every node's and principal's key is derived from it. */
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
  /** Time a peer has from TCP accept until it authenticates (default 5 s); then it is dropped. */
  helloTimeoutMs?: number;
  /** Bytes a peer may send before it authenticates (default 8 KiB, the upgrade request apart). */
  preAuthBytes?: number;
  /** Connections held at once (default 1024), and of those not yet authenticated (default 256). */
  maxConnections?: number;
  maxUnauthenticated?: number;
  /**
   * Of those not yet authenticated, from one source address (default a quarter of maxUnauthenticated):
   * past it the source's own oldest is dropped, so a flood from one source competes only with itself.
   */
  maxUnauthenticatedPerSource?: number;
  /** Sessions one node may hold on this replica at once (default 16); more are refused, retryably. */
  maxSessionsPerNode?: number;
  /**
   * Requests of one session being served at once (default 1024), and their bytes (writes' data and
   * reads' lengths, default 16 MiB): past either, the replica stops reading that session until some
   * are answered, so a fast peer waits in its own buffers instead of growing the replica's memory.
   */
  maxInflightPerSession?: number;
  maxInflightBytesPerSession?: number;
  /**
   * Replies buffered for a session that does not read them (default 4 MiB): past it, reading stops
   * too. A session costs the replica at most about the in-flight bytes plus this.
   */
  maxSendBufferBytes?: number;
  /** While dismounted, how often to probe an unavailable store. */
  probeIntervalMs?: number;
  maxHandlesPerSession?: number;
  maxBadFrames?: number;
  /** Metrics hooks (cluster/metrics.ts); absent, nothing is measured. */
  observe?: ReplicaObserver;
}

/** What a replica reports as it works, for /metrics. */
export interface ReplicaObserver {
  /** A request answered after `ms`, by message type. */
  request(type: string, ms: number): void;
  /** A resume item answered: `granted`, or the denial code. */
  resume(outcome: string): void;
  /** One store transaction of `ms`. */
  transaction(ms: number): void;
  writeApplied(): void;
  badFrame(): void;
}

interface Session {
  id: string;
  node: string;
  /** Principals the node proved on this session: the only ones its opens and resumes may name. */
  principals: Set<string>;
  /** What later `prove` frames are made over. */
  transcript: string;
  conn: Connection;
  handles: Map<string, HandleRecord>;
  lastHeardMs: number;
  badFrames: number;
  /** Recent request ids, to drop duplicates. */
  seen: Set<number>;
  /** Requests being served, and their bytes; whether reading is paused for backpressure. */
  inflight: number;
  inflightBytes: number;
  paused: boolean;
  /** Replies waiting to be sent at the last silence check: a shrinking buffer is a live reader. */
  lastBuffered: number;
  /**
   * Frames that arrived while reading was paused: the transport hands over what it had already
   * read from the socket (at most one read's worth), and they wait here, in order, for the resume.
   */
  held: Decoded[];
}

const SEEN_WINDOW = 4096;
/** What a request without bytes counts against the in-flight bytes (per open, per resume item): its decoded header and the work it holds. */
const REQUEST_COST = 1024;
/** Principals one session may prove (in `auth` and later `prove` frames). */
export const MAX_PRINCIPALS_PER_SESSION = 256;

/** A connection between hello and welcome: whom it claims to be and what it must prove. */
interface Handshake {
  node: string;
  key: Buffer;
  transcript: string;
}


export class StorageReplica {
  readonly id: string;
  readonly store: Store;
  readonly holdMs: number;
  /** A renewal of every session is running. */
  private renewing = false;
  /** Warnings a peer can cause, rate-limited (see LogLimiter). */
  private readonly warnings: LogLimiter;
  readonly leaseMs: number;
  readonly heartbeatIntervalMs: number;
  private readonly env: Env;
  /** The handles' lifecycle records, and those of lost sessions in their hold period. */
  private readonly records: HandleRecords;
  private readonly opts: ReplicaOptions;
  private listener: Listener | undefined;
  private readonly sessions = new Map<string, Session>();
  private readonly pending = new Set<Connection>();
  private stopTimers: Array<() => void> = [];
  private dismounted: 'no' | 'manual' | 'auto' = 'no';
  private lastStoreError: string | undefined;
  /** Counters for status views, tests and benchmarks. */
  readonly stats = { sessions: 0, resumeMessages: 0, resumesGranted: 0, resumesDenied: 0, writesApplied: 0, badFrames: 0, backpressure: 0 };
  private stopped = false;
  private readonly keyring: Keyring;

  constructor(opts: ReplicaOptions) {
    this.opts = opts;
    this.id = opts.id;
    this.store = opts.store;
    this.keyring = new Keyring(opts.secret);
    const observe = opts.observe;
    if (observe) opts.store.onTransaction = (ms) => observe.transaction(ms);
    this.env = defaultEnv(opts.env);
    this.env.log = actorLog(this.env.log, opts.id);
    this.holdMs = opts.holdMs ?? 5000;
    this.records = new HandleRecords(this.env.clock, this.holdMs, pureInspector(this.env.inspect));
    this.warnings = new LogLimiter(this.env.clock);
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

  /** Every live session: its id, its node, and how long ago it was last heard from (for `explain`). */
  sessionList(): Array<{ id: string; node: string; silentMs: number }> {
    const now = this.env.clock.now();
    return [...this.sessions.values()].map((s) => ({ id: s.id, node: s.node, silentMs: Math.max(0, now - s.lastHeardMs) }));
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  async start(): Promise<this> {
    const listenOpts: { host?: string; port?: number; name: string } = { name: this.id };
    if (this.opts.host !== undefined) listenOpts.host = this.opts.host;
    if (this.opts.port !== undefined) listenOpts.port = this.opts.port;
    const limits = {
      preAuthBytes: this.opts.preAuthBytes ?? 8 * 1024,
      preAuthMs: this.opts.helloTimeoutMs ?? 5000,
      maxConnections: this.opts.maxConnections ?? 1024,
      maxUnauthenticated: this.opts.maxUnauthenticated ?? 256,
      ...(this.opts.maxUnauthenticatedPerSource !== undefined ? { maxUnauthenticatedPerSource: this.opts.maxUnauthenticatedPerSource } : {}),
    };
    const onLimit = ({ source, held }: { source: string; held: number }) => {
      const t = this.warnings.take('pre-auth limit');
      if (t.log) this.env.log.warn({ source, held, ...(t.suppressed ? { suppressed: t.suppressed } : {}) }, 'limiting a source: dropped its oldest connection not yet authenticated');
    };
    this.listener = await this.opts.transport.listen({ ...listenOpts, limits, onLimit });
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
    this.records.dropOrphans();
    await this.listener?.close();
  }

  /** Operator control: the store counts as unavailable until `mount()`. */
  dismount(): void {
    this.enterDismounted('manual');
  }

  /** While dismounted by a store error: that error (e.g. `sqlite: SQLITE_READONLY: ...`), for status and the inspector. */
  get storeError(): string | undefined {
    return this.dismounted === 'no' ? undefined : this.lastStoreError;
  }

  mount(): void {
    if (this.dismounted === 'no') return;
    this.dismounted = 'no';
    this.lastStoreError = undefined;
    this.env.log.warn('store available again: mounted');
    this.broadcast({ type: 'notice', kind: 'available' });
  }

  /** Per session: requests in flight, their bytes, replies waiting to be sent, and whether reading is paused. */
  sessionLoad(): Array<{ session: string; node: string; inflight: number; inflightBytes: number; bufferedBytes: number; paused: boolean }> {
    return [...this.sessions.values()].map((s) => ({ session: s.id, node: s.node, inflight: s.inflight, inflightBytes: s.inflightBytes, bufferedBytes: s.conn.bufferedBytes, paused: s.paused }));
  }

  handles(): ReplicaHandleView[] {
    const out: ReplicaHandleView[] = [];
    for (const s of this.sessions.values()) {
      for (const h of s.handles.values()) out.push(view(h, s.node));
    }
    for (const h of this.records.orphans()) out.push(view(h, ''));
    return out;
  }

  private accept(conn: Connection): void {
    if (this.pending.size >= (this.opts.maxUnauthenticated ?? 256)) {
      const t = this.warnings.take('too many unauthenticated');
      if (t.log) this.env.log.warn({ remote: conn.remote, pending: this.pending.size, ...(t.suppressed ? { suppressed: t.suppressed } : {}) }, 'dropped a connection: too many peers not yet authenticated (maxUnauthenticated)');
      return conn.terminate();
    }
    this.pending.add(conn);
    // A peer that has not authenticated within the hello timeout is dropped at once: a close
    // handshake would wait on a peer that may never answer.
    const timer = this.env.clock.setTimeout(() => {
      if (this.pending.delete(conn)) conn.terminate();
    }, this.opts.helloTimeoutMs ?? 5000);
    let session: Session | undefined;
    let hs: Handshake | undefined;
    let refused = false;
    conn.onClose(() => {
      this.pending.delete(conn);
      this.env.clock.clearTimeout(timer);
      if (session) this.loseSession(session, 'connection closed', true);
    });
    conn.onFrame((frame) => {
      if (session) {
        session.lastHeardMs = this.env.clock.now();
        if (session.paused || session.held.length > 0) session.held.push(frame);
        else {
          this.onFrame(session, frame);
          // Any answer (a pong, a refusal) adds to what waits to be sent: a peer that does not read
          // stops being read whatever it sends.
          this.flow(session);
        }
        return;
      }
      if (refused) return;
      const step = hs ? this.authenticate(conn, hs, frame) : this.hello(conn, frame);
      if (step === undefined) {
        refused = true;
        this.pending.delete(conn);
        this.env.clock.clearTimeout(timer);
      } else if ('id' in step) {
        session = step;
        this.env.clock.clearTimeout(timer);
      } else hs = step;
    });
  }

  /** Refuse a peer during the handshake: one coded error, then the connection goes. */
  private refuse(conn: Connection, message: string, why: string, fields: Record<string, unknown> = {}, code: ErrorCode = 'AUTH_FAILED'): undefined {
    const t = this.warnings.take('refused peer');
    if (t.log) this.env.log.warn({ remote: conn.remote, ...fields, ...(t.suppressed ? { suppressed: t.suppressed } : {}) }, `refused a peer: ${why}`);
    this.reply(conn, undefined, code, message);
    conn.close(CLOSE.AUTH_FAILED, why);
    // A peer that does not answer the close is dropped.
    this.env.clock.setTimeout(() => conn.terminate(), 1000);
    return undefined;
  }

  /** `hello`: answer with a nonce and the proof that this replica holds the node's key. */
  private hello(conn: Connection, frame: Decoded): Handshake | undefined {
    if (!frame.ok || frame.msg.type !== 'hello') {
      const got = frame.ok ? frame.msg.type : `${frame.code}: ${frame.message}`;
      return this.refuse(conn, `the first message must be hello (protocol version 3); got ${got}`, 'expected hello');
    }
    const node = frame.msg.node;
    const key = this.keyring.node(node);
    const nonce = this.env.newId();
    const t = transcript(node, frame.msg.nonce, nonce, this.id);
    conn.send({ type: 'challenge', replica: this.id, nonce, proof: proofs.replica(key, t) });
    return { node, key, transcript: t };
  }

  /** `auth`: the node's proof, and one per principal it speaks for; then the session. */
  private authenticate(conn: Connection, hs: Handshake, frame: Decoded): Session | undefined {
    if (!frame.ok || frame.msg.type !== 'auth') return this.refuse(conn, 'expected auth after challenge', 'expected auth', { node: hs.node });
    const seal = frame.msg.seal === true;
    if (!proofMatches(proofs.node(hs.key, hs.transcript, seal), frame.msg.proof)) {
      return this.refuse(conn, `wrong credential for node ${hs.node}`, 'wrong node credential', { node: hs.node });
    }
    // A wrong principal proof refuses that principal only (the node is told in the welcome): one
    // stale credential must not keep a node's every application from its storage.
    const principals = new Set<string>();
    const refused: string[] = [];
    for (const p of frame.msg.principals) {
      if (proofMatches(proofs.principal(this.keyring.principal(p.name), p.name, hs.transcript), p.proof)) principals.add(p.name);
      else refused.push(p.name);
    }
    if (refused.length > 0) {
      const t = this.warnings.take('wrong principal proof');
      if (t.log) this.env.log.warn({ node: hs.node, principals: refused, ...(t.suppressed ? { suppressed: t.suppressed } : {}) }, 'wrong principal credential');
    }
    const maxSessions = this.opts.maxSessionsPerNode ?? 16;
    let ofNode = 0;
    for (const other of this.sessions.values()) if (other.node === hs.node) ofNode++;
    if (ofNode >= maxSessions) {
      return this.refuse(conn, `node ${hs.node} already holds ${ofNode} sessions on ${this.id} (maxSessionsPerNode ${maxSessions}); retry once one has ended`, 'too many sessions of one node', { node: hs.node }, 'UNAVAILABLE');
    }
    this.pending.delete(conn);
    conn.trust();
    // The welcome and every frame after it are sealed, if the node asked (its proof covers the wish).
    if (seal) conn.protect(sessionKey(hs.key, hs.transcript), 'server');
    const session: Session = { id: this.env.newId(), node: hs.node, principals, transcript: hs.transcript, conn, handles: new Map(), lastHeardMs: this.env.clock.now(), badFrames: 0, seen: new Set(), inflight: 0, inflightBytes: 0, paused: false, lastBuffered: 0, held: [] };
    conn.onDrain(() => {
      // The peer took what was buffered: it is alive.
      session.lastHeardMs = this.env.clock.now();
      this.flow(session);
    });
    this.sessions.set(session.id, session);
    this.stats.sessions++;
    conn.send({ type: 'welcome', session: session.id, replica: this.id, heartbeatIntervalMs: this.heartbeatIntervalMs, available: this.dismounted === 'no', ...(refused.length > 0 ? { refused } : {}) });
    this.env.log.info({ session: session.id, node: session.node, principals: principals.size }, 'session opened');
    return session;
  }

  /** `prove` on a running session: one more principal its opens may name. */
  private onProve(s: Session, msg: MessageOf<'prove'>): void {
    if (!proofMatches(proofs.principal(this.keyring.principal(msg.principal), msg.principal, s.transcript), msg.proof)) {
      const t = this.warnings.take('wrong principal proof');
      if (t.log) this.env.log.warn({ session: s.id, node: s.node, principal: msg.principal, ...(t.suppressed ? { suppressed: t.suppressed } : {}) }, 'wrong principal credential');
      this.countBad(s);
      return void s.conn.send({ type: 'error', code: 'AUTH_FAILED', message: `wrong credential for principal ${msg.principal}`, retryable: false, principal: msg.principal });
    }
    if (!s.principals.has(msg.principal) && s.principals.size >= MAX_PRINCIPALS_PER_SESSION) {
      return this.reply(s.conn, undefined, 'INVALID_ARGUMENT', `a session may prove at most ${MAX_PRINCIPALS_PER_SESSION} principals`);
    }
    s.principals.add(msg.principal);
  }

  /** Refuse a request naming a principal this session did not prove. */
  private checkPrincipal(s: Session, principal: string): void {
    if (!s.principals.has(principal)) throw new SafeResumeError('FORBIDDEN', `principal ${principal} is not proven on this session`);
  }

  /** One more bad frame (or refused proof, or message a replica does not take) on this session. */
  private countBad(s: Session): void {
    if (++s.badFrames >= (this.opts.maxBadFrames ?? 100)) s.conn.close(CLOSE.PROTOCOL, 'too many bad frames');
  }

  private onFrame(s: Session, frame: Decoded): void {
    if (!frame.ok) {
      this.stats.badFrames++;
      this.opts.observe?.badFrame();
      const t = this.warnings.take('bad frame');
      if (t.log) this.env.log.warn({ session: s.id, node: s.node, code: frame.code, message: frame.message, ...(t.suppressed ? { suppressed: t.suppressed } : {}) }, 'bad frame');
      this.reply(s.conn, frame.id, frame.code, frame.message);
      return this.countBad(s);
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
      case 'prove':
        return this.onProve(s, msg);
      case 'open':
        return this.serve(s, msg.id, REQUEST_COST, () => this.onOpen(s, msg), 'open');
      case 'resume':
        return this.serve(s, msg.id, REQUEST_COST * msg.items.length, () => this.onResume(s, msg), 'resume');
      case 'write':
        return this.serve(s, msg.id, msg.data.length, () => this.onWrite(s, msg), 'write');
      case 'read':
        return this.serve(s, msg.id, msg.length, () => this.onRead(s, msg), 'read');
      case 'close':
        return this.serve(s, msg.id, 0, () => this.onClose(s, msg), 'close');
      case 'grant':
      case 'revoke':
        return this.serve(s, msg.id, REQUEST_COST, () => this.onAccess(s, msg), msg.type);
      default:
        this.reply(s.conn, 'id' in msg ? msg.id : undefined, 'BAD_FRAME', `a replica does not accept ${msg.type}`);
        this.countBad(s);
    }
  }

  /** Serve one request, counted in flight (with `bytes`) until it is answered. */
  private serve(s: Session, id: number, bytes: number, work: () => Promise<void>, type: string): void {
    s.inflight++;
    s.inflightBytes += bytes;
    this.flow(s);
    const observe = this.opts.observe;
    const t0 = observe ? this.env.clock.now() : 0;
    void this.guard(s, id, work()).finally(() => {
      s.inflight--;
      s.inflightBytes -= bytes;
      observe?.request(type, this.env.clock.now() - t0);
      this.flow(s);
    });
  }

  /**
   * Backpressure: stop reading a session while too much of it is in flight or too many of its replies
   * wait to be sent, and read again once it is under half of each limit.
   */
  private flow(s: Session): void {
    const maxN = this.opts.maxInflightPerSession ?? 1024;
    const maxBytes = this.opts.maxInflightBytesPerSession ?? 16 * 1024 * 1024;
    // Not below the socket's high-water mark, or no 'drain' would ever come to resume reading.
    const maxSend = Math.max(this.opts.maxSendBufferBytes ?? 4 * 1024 * 1024, 64 * 1024);
    if (!s.paused) {
      if (s.inflight < maxN && s.inflightBytes < maxBytes && s.conn.bufferedBytes < maxSend) return;
      s.paused = true;
      this.stats.backpressure++;
      s.conn.pauseReading();
      return;
    }
    if (s.inflight <= maxN / 2 && s.inflightBytes <= maxBytes / 2 && s.conn.bufferedBytes <= maxSend / 2) {
      s.paused = false;
      // Silence while the replica was not reading was the replica's doing.
      s.lastHeardMs = this.env.clock.now();
      // What arrived meanwhile first, in order, until a limit is reached again.
      while (!s.paused && s.held.length > 0 && this.sessions.get(s.id) === s) this.onFrame(s, s.held.shift()!);
      if (!s.paused) s.conn.resumeReading();
    }
  }

  /** Turn a failed request into an error reply; a store outage dismounts the replica. */
  private async guard(s: Session, id: number, work: Promise<void>): Promise<void> {
    try {
      await work;
    } catch (err) {
      if (err instanceof StoreUnavailableError) {
        this.lastStoreError = err.message;
        this.enterDismounted('auto');
        // A commit sent and never answered may land: the node must not take this refusal as proof.
        this.reply(s.conn, id, 'UNAVAILABLE', err.message, undefined, err.maybeApplied);
      } else if (err instanceof SafeResumeError) {
        this.reply(s.conn, id, err.code, err.message);
      } else {
        this.env.log.error({ err, session: s.id }, 'request failed');
        // Whatever failed may have failed after the store took the request: no proof it was not applied.
        this.reply(s.conn, id, 'INTERNAL', 'internal error; see the replica log', undefined, true);
      }
    }
  }

  private reply(conn: Connection, id: number | undefined, code: ErrorCode, message: string, lastSeq?: number, maybeApplied = false): void {
    const err: Message = { type: 'error', code, message, retryable: new SafeResumeError(code).retryable };
    if (id !== undefined) err.id = id;
    if (lastSeq !== undefined) err.lastSeq = lastSeq;
    if (maybeApplied) err.outcome = 'unknown';
    conn.send(err);
  }

  private checkMounted(): void {
    if (this.dismounted !== 'no') throw new SafeResumeError('UNAVAILABLE', `${this.id}: store dismounted`);
  }

  /** How long a live session's lock lasts from the store's now: a lease, then the hold period. */
  private get lockMs(): number {
    return this.leaseMs + this.holdMs;
  }

  private async onOpen(s: Session, msg: MessageOf<'open'>): Promise<void> {
    this.checkMounted();
    this.checkPrincipal(s, msg.principal);
    if (s.handles.size >= (this.opts.maxHandlesPerSession ?? 100_000)) throw new SafeResumeError('INVALID_ARGUMENT', 'too many handles on this session');
    const res = await this.store.open({ target: msg.target, requestId: msg.requestId, principal: msg.principal, mode: msg.mode, session: s.id, leaseMs: this.lockMs, instance: msg.instance, size: msg.size, epoch: msg.epoch });
    if (!res.ok) throw new SafeResumeError(res.code, res.message);
    this.step(this.attach(s, msg.target, msg.requestId, msg.mode, false), { type: 'GRANTED' });
    s.conn.send({ type: 'opened', id: msg.id, version: res.version, lastSeq: res.lastSeq, ...(res.size ? { size: res.size } : {}) });
  }

  private async onResume(s: Session, msg: MessageOf<'resume'>): Promise<void> {
    this.checkMounted();
    // A resume attaches handles as an open does: it counts against the same limit.
    let added = 0;
    for (const it of msg.items) if (!s.handles.has(keyOf(it.target, it.requestId))) added++;
    if (s.handles.size + added > (this.opts.maxHandlesPerSession ?? 100_000)) throw new SafeResumeError('INVALID_ARGUMENT', 'too many handles on this session');
    const leaseMs = this.lockMs;
    this.stats.resumeMessages++;
    // Items naming a principal this session did not prove never reach the store.
    const allowed = msg.items.filter((it) => s.principals.has(it.principal));
    const decided = await this.store.resume(allowed.map((it) => ({ ...it, session: s.id, leaseMs })));
    let next = 0;
    const results: ResumeResult[] = msg.items.map((it) => {
      if (!s.principals.has(it.principal)) {
        this.stats.resumesDenied++;
        this.opts.observe?.resume('FORBIDDEN');
        return { target: it.target, requestId: it.requestId, granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN', version: 0 };
      }
      const out = decided[next++]!;
      const h = this.attach(s, it.target, it.requestId, it.mode, true);
      if (out.granted) {
        this.stats.resumesGranted++;
        this.opts.observe?.resume('granted');
        this.step(h, { type: 'GRANTED' });
        return { target: it.target, requestId: it.requestId, granted: true, lastSeq: out.lastSeq, version: out.version, ...(out.size ? { size: out.size } : {}) };
      }
      this.stats.resumesDenied++;
      this.opts.observe?.resume(out.code);
      this.env.log.info({ target: it.target, requestId: it.requestId, reason: out.reason, session: s.id }, 'resume denied');
      this.step(h, { type: 'DENIED', reason: out.reason });
      this.detach(s, it.target, it.requestId);
      const denied: ResumeResult = { target: it.target, requestId: it.requestId, granted: false, reason: out.reason, code: out.code, version: out.version };
      if (out.lastSeq !== undefined) denied.lastSeq = out.lastSeq;
      if (out.heldEpoch !== undefined) denied.heldEpoch = out.heldEpoch;
      return denied;
    });
    s.conn.send({ type: 'resumed', id: msg.id, results });
  }

  private handle(s: Session, target: string, requestId: string): HandleRecord {
    const h = s.handles.get(keyOf(target, requestId));
    if (!h) throw new SafeResumeError('NOT_OPEN', `no open handle on ${target} for this requestId in this session`);
    return h;
  }

  private async onWrite(s: Session, msg: MessageOf<'write'>): Promise<void> {
    this.checkMounted();
    const h = this.handle(s, msg.target, msg.requestId);
    if (h.mode !== 'write') throw new SafeResumeError('INVALID_ARGUMENT', 'handle was opened for reading');
    const res = await this.store.write({ target: msg.target, requestId: msg.requestId, session: s.id, seq: msg.seq, offset: msg.offset, data: msg.data });
    if (res.ok) {
      if (res.applied) {
        this.stats.writesApplied++;
        this.opts.observe?.writeApplied();
      }
      s.conn.send({ type: 'written', id: msg.id, seq: msg.seq, version: res.version });
      return;
    }
    if (res.code === 'MODIFIED' || res.code === 'SUPERSEDED') {
      this.step(h, { type: 'REVOKED', reason: res.code });
      this.detach(s, msg.target, msg.requestId);
    }
    // Answered here, not thrown to `guard`: a throw takes more promise turns, and a refusal must
    // reach the agent in store order (before the answer to a close sent after it, for one).
    this.reply(s.conn, msg.id, res.code, res.message, res.lastSeq);
  }

  private async onRead(s: Session, msg: MessageOf<'read'>): Promise<void> {
    this.checkMounted();
    const h = this.handle(s, msg.target, msg.requestId);
    const fence = h.mode === 'write' ? { requestId: msg.requestId, session: s.id } : undefined;
    const res = await this.store.read({ target: msg.target, offset: msg.offset, length: msg.length, fence });
    if (res.ok) {
      s.conn.send({ type: 'data', id: msg.id, version: res.version, data: res.data });
      return;
    }
    this.step(h, { type: 'REVOKED', reason: res.code });
    this.detach(s, msg.target, msg.requestId);
    this.reply(s.conn, msg.id, res.code, res.message);
  }

  private async onClose(s: Session, msg: MessageOf<'close'>): Promise<void> {
    this.checkMounted();
    const h = s.handles.get(keyOf(msg.target, msg.requestId));
    // Only a handle this session holds can be closed through it; anything else is not a `closed`.
    if (!h) throw new SafeResumeError('NOT_OPEN', `${msg.target} is not open on this session`);
    await this.store.close({ target: msg.target, requestId: msg.requestId }, s.id);
    this.step(h, { type: 'CLOSE' });
    this.detach(s, msg.target, msg.requestId);
    s.conn.send({ type: 'closed', id: msg.id });
  }

  /** A target's owner grants or revokes another principal's access: decided by the store (rules.decideAccess). */
  private async onAccess(s: Session, msg: MessageOf<'grant'> | MessageOf<'revoke'>): Promise<void> {
    this.checkMounted();
    this.checkPrincipal(s, msg.principal);
    const res = await this.store.editAccess({ target: msg.target, by: msg.principal, principal: msg.grantee, mode: msg.type === 'grant' ? msg.mode : 'none' });
    if (!res.ok) throw new SafeResumeError(res.code, res.message);
    s.conn.send({ type: 'access', id: msg.id, target: msg.target, owner: res.access.owner, grants: res.access.grants });
  }

  /** The handle's record on this session: an orphan of a lost session resumed here, or a new one. */
  private attach(s: Session, target: string, requestId: string, mode: 'read' | 'write', resume: boolean): HandleRecord {
    return this.records.attach(s.handles, s.id, target, requestId, mode, resume);
  }

  private detach(s: Session, target: string, requestId: string): void {
    this.records.detach(s.handles, target, requestId);
  }

  private step(h: HandleRecord | undefined, event: ReplicaHandleStepEvent): void {
    this.records.step(h, event);
  }

  private loseSession(s: Session, why: string, keepOrphans: boolean): void {
    if (!this.sessions.delete(s.id)) return;
    this.env.log.info({ session: s.id, node: s.node, handles: s.handles.size, why }, 'session lost');
    s.conn.terminate();
    const held: HandleRef[] = [];
    for (const [key, h] of s.handles) {
      if (h.mode === 'write') held.push({ target: h.target, requestId: h.requestId });
      this.step(h, { type: 'SESSION_LOST' });
      if (keepOrphans) this.records.orphan(key, h);
      else this.records.drop(h);
    }
    s.handles.clear();
    // The hold period starts now: the lock lasts holdMs more, then lapses.
    if (held.length > 0 && this.dismounted === 'no') {
      this.store.renew(s.id, held, this.holdMs).catch((err: unknown) => {
        this.env.log.warn({ err: String(err), session: s.id }, 'could not start the hold period; locks lapse at their lease');
      });
    }
  }

  private reapSilent(): void {
    const deadline = this.env.clock.now() - REPLICA_SILENCE_INTERVALS * this.heartbeatIntervalMs;
    for (const s of [...this.sessions.values()]) {
      // A session whose reading this replica paused while serving it is not silent; one that does
      // not read its replies is (its peer is gone or stuck), and is dropped like any silent one.
      if (s.paused && s.inflight > 0) continue;
      // Neither is one that takes its replies, however slowly (the replica reads nothing meanwhile).
      const buffered = s.conn.bufferedBytes;
      if (s.paused && buffered < s.lastBuffered) s.lastHeardMs = this.env.clock.now();
      s.lastBuffered = buffered;
      if (s.lastHeardMs < deadline) this.loseSession(s, 'heartbeat timeout', true);
    }
  }

  private async renewAll(): Promise<void> {
    // A renewal slower than the interval (many handles, a slow store) is not joined by another.
    if (this.dismounted !== 'no' || this.renewing) return;
    this.renewing = true;
    try {
      await this.renewSessions();
    } finally {
      this.renewing = false;
    }
  }

  private async renewSessions(): Promise<void> {
    const leaseMs = this.lockMs;
    for (const s of [...this.sessions.values()]) {
      const refs: HandleRef[] = [];
      for (const h of s.handles.values()) if (h.mode === 'write' && h.state === 'active') refs.push({ target: h.target, requestId: h.requestId });
      if (refs.length === 0) continue;
      try {
        const { lost } = await this.store.renew(s.id, refs, leaseMs);
        for (const l of lost) {
          const h = s.handles.get(keyOf(l.target, l.requestId));
          if (!h) continue;
          this.step(h, { type: 'REVOKED', reason: l.reason });
          this.detach(s, l.target, l.requestId);
          s.conn.send({ type: 'revoked', target: l.target, requestId: l.requestId, reason: l.reason, ...(l.lastSeq !== undefined ? { lastSeq: l.lastSeq } : {}) });
        }
      } catch (err) {
        if (err instanceof StoreUnavailableError) {
          this.lastStoreError = err.message;
          return this.enterDismounted('auto');
        }
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
    for (const s of this.sessions.values()) for (const h of s.handles.values()) this.step(h, { type: 'STORAGE_UNAVAILABLE' });
    this.broadcast({ type: 'notice', kind: 'unavailable' });
    if (kind === 'auto') this.probe();
  }

  private probe(): void {
    const retry = () => {
      if (this.stopped || this.dismounted !== 'auto') return;
      this.store.ping().then(
        () => this.dismounted === 'auto' && this.mount(),
        (err: unknown) => {
          if (err instanceof Error) this.lastStoreError = err.message;
          this.env.clock.setTimeout(retry, this.opts.probeIntervalMs ?? 500);
        },
      );
    };
    this.env.clock.setTimeout(retry, this.opts.probeIntervalMs ?? 500);
  }

  private broadcast(msg: Message): void {
    for (const s of this.sessions.values()) s.conn.send(msg);
  }
}
