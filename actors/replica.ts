/**
 * StorageReplica: a WebSocket (or in-memory) server over one store. It authenticates node agents,
 * serves their handles, renews their locks in one batch per session, starts the hold period when a
 * session is lost, and tells its sessions when its store goes away and comes back (dismount).
 *
 * This is the shell: it owns the listener and its connections, the store and the env clock, feeds
 * what happens to the pure core (core/replica.ts) and carries out the intents it returns, in order.
 */
import { SafeResumeError } from '../errors.js';
import { DEFAULT_HEARTBEAT_INTERVAL_MS } from '../transport/messages.js';
import type { Connection, Listener, Transport } from '../transport/types.js';
import { StoreUnavailableError, type Store } from '../store/types.js';
import {
  MAX_PRINCIPALS_PER_SESSION,
  ReplicaCore,
  type ReplicaInput,
  type ReplicaIntent,
  type StoreCall,
  type StoreFailure,
} from '../core/replica.js';
import type { HandleRecord, ReplicaHandleView } from '../core/replica-handles.js';
import { actorLog, defaultEnv, every, type Env } from './env.js';
import { pureInspector } from './pure-inspect.js';

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

/** Principals one session may prove (in `auth` and later `prove` frames). */
export { MAX_PRINCIPALS_PER_SESSION };

export class StorageReplica {
  readonly id: string;
  readonly store: Store;
  readonly holdMs: number;
  readonly leaseMs: number;
  readonly heartbeatIntervalMs: number;
  private readonly env: Env;
  private readonly opts: ReplicaOptions;
  /** The protocol: every decision is the core's; this shell does its I/O. */
  private readonly core: ReplicaCore;
  private listener: Listener | undefined;
  /** Accepted connections, by the number the core knows them by. */
  private readonly conns = new Map<number, Connection>();
  private nextConn = 1;
  /** The core's timers armed on the env clock, by the core's number. */
  private readonly timers = new Map<number, unknown>();
  private stopTimers: Array<() => void> = [];
  private stopped = false;
  /** Counters for status views, tests and benchmarks. */
  readonly stats: ReplicaCore['stats'];

  constructor(opts: ReplicaOptions) {
    this.opts = opts;
    this.id = opts.id;
    this.store = opts.store;
    const observe = opts.observe;
    if (observe) opts.store.onTransaction = (ms) => observe.transaction(ms);
    this.env = defaultEnv(opts.env);
    this.env.log = actorLog(this.env.log, opts.id);
    this.holdMs = opts.holdMs ?? 5000;
    this.leaseMs = opts.leaseMs ?? 3000;
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
    this.core = new ReplicaCore({
      id: opts.id,
      secret: opts.secret,
      holdMs: this.holdMs,
      leaseMs: this.leaseMs,
      heartbeatIntervalMs: this.heartbeatIntervalMs,
      helloTimeoutMs: opts.helloTimeoutMs ?? 5000,
      maxUnauthenticated: opts.maxUnauthenticated ?? 256,
      maxSessionsPerNode: opts.maxSessionsPerNode ?? 16,
      maxInflightPerSession: opts.maxInflightPerSession ?? 1024,
      maxInflightBytesPerSession: opts.maxInflightBytesPerSession ?? 16 * 1024 * 1024,
      maxSendBufferBytes: opts.maxSendBufferBytes ?? 4 * 1024 * 1024,
      probeIntervalMs: opts.probeIntervalMs ?? 500,
      maxHandlesPerSession: opts.maxHandlesPerSession ?? 100_000,
      maxBadFrames: opts.maxBadFrames ?? 100,
      observed: observe !== undefined,
      newId: this.env.newId,
      watcher: pureInspector<HandleRecord>(this.env.inspect),
    });
    this.stats = this.core.stats;
  }

  get url(): string {
    if (!this.listener) throw new Error(`${this.id} is not listening`);
    return this.listener.url;
  }

  get isDismounted(): boolean {
    return this.core.isDismounted;
  }

  /** Every live session: its id, its node, and how long ago it was last heard from (for `explain`). */
  sessionList(): Array<{ id: string; node: string; silentMs: number }> {
    return this.core.sessionList(this.env.clock.now());
  }

  get sessionCount(): number {
    return this.core.sessions.size;
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
      ...(this.opts.maxUnauthenticatedPerSource !== undefined
        ? { maxUnauthenticatedPerSource: this.opts.maxUnauthenticatedPerSource }
        : {}),
    };
    const onLimit = ({ source, held }: { source: string; held: number }) =>
      this.feed({ type: 'source-limited', source, held });
    this.listener = await this.opts.transport.listen({ ...listenOpts, limits, onLimit });
    this.listener.onConnection((conn) => this.accept(conn));
    const { clock } = this.env;
    this.stopTimers.push(
      every(clock, this.opts.renewIntervalMs ?? Math.max(1, Math.floor(this.leaseMs / 3)), () =>
        this.feed({ type: 'renew-tick' }),
      ),
    );
    this.stopTimers.push(every(clock, this.heartbeatIntervalMs, () => this.reap()));
    this.env.log.info({ url: this.listener.url, store: this.store.kind, holdMs: this.holdMs }, 'replica listening');
    return this;
  }

  /** Stop serving: every connection is dropped as in a crash; locks keep their hold period. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const stop of this.stopTimers) stop();
    this.stopTimers = [];
    this.feed({ type: 'stop' });
    await this.listener?.close();
  }

  /** Operator control: the store counts as unavailable until `mount()`. */
  dismount(): void {
    this.feed({ type: 'dismount' });
  }

  /** While dismounted by a store error: that error (e.g. `sqlite: SQLITE_READONLY: ...`), for status and the inspector. */
  get storeError(): string | undefined {
    return this.core.storeError;
  }

  mount(): void {
    this.feed({ type: 'mount' });
  }

  /** Per session: requests in flight, their bytes, replies waiting to be sent, and whether reading is paused. */
  sessionLoad(): Array<{
    session: string;
    node: string;
    inflight: number;
    inflightBytes: number;
    bufferedBytes: number;
    paused: boolean;
  }> {
    return [...this.core.sessions.values()].map((s) => ({
      session: s.id,
      node: s.node,
      inflight: s.inflight,
      inflightBytes: s.inflightBytes,
      bufferedBytes: this.conns.get(s.conn)?.bufferedBytes ?? 0,
      paused: s.paused,
    }));
  }

  handles(): ReplicaHandleView[] {
    return this.core.handles();
  }

  private accept(conn: Connection): void {
    const id = this.nextConn++;
    this.conns.set(id, conn);
    conn.onClose(() => {
      this.conns.delete(id);
      this.feed({ type: 'closed', conn: id });
    });
    conn.onFrame((frame) => this.feed({ type: 'frame', conn: id, frame }));
    conn.onDrain(() => this.feed({ type: 'drain', conn: id, buffered: conn.bufferedBytes }));
    this.feed({ type: 'accept', conn: id, remote: conn.remote });
  }

  private reap(): void {
    const buffered = new Map<number, number>();
    for (const s of this.core.sessions.values()) buffered.set(s.conn, this.conns.get(s.conn)?.bufferedBytes ?? 0);
    this.feed({ type: 'reap-tick', buffered });
  }

  /** One input to the core, at the clock's now, and its intents carried out in order. */
  private feed(input: ReplicaInput): void {
    this.carry(this.core.step(this.env.clock.now(), input));
  }

  private carry(intents: ReplicaIntent[]): void {
    for (const it of intents) {
      switch (it.kind) {
        case 'send':
          this.conns.get(it.conn)?.send(it.msg);
          break;
        case 'buffered': {
          const conn = this.conns.get(it.conn);
          const bytes = conn?.bufferedBytes ?? 0;
          if (conn && bytes >= it.atLeast) this.feed({ type: 'buffered', conn: it.conn, bytes });
          break;
        }
        case 'store':
          this.run(it.call, it.what);
          break;
        case 'arm':
          this.timers.set(
            it.timer,
            this.env.clock.setTimeout(() => {
              this.timers.delete(it.timer);
              this.feed({ type: 'timer', timer: it.timer });
            }, it.ms),
          );
          break;
        case 'cancel':
          this.env.clock.clearTimeout(this.timers.get(it.timer));
          this.timers.delete(it.timer);
          break;
        case 'pause-reading':
          this.conns.get(it.conn)?.pauseReading();
          break;
        case 'resume-reading':
          this.conns.get(it.conn)?.resumeReading();
          break;
        case 'trust':
          this.conns.get(it.conn)?.trust();
          break;
        case 'protect':
          this.conns.get(it.conn)?.protect(it.key, 'server');
          break;
        case 'close':
          this.conns.get(it.conn)?.close(it.code, it.reason);
          break;
        case 'terminate':
          this.conns.get(it.conn)?.terminate();
          break;
        case 'log':
          this.env.log[it.level](it.fields, it.msg);
          break;
        case 'observe':
          this.observe(it);
          break;
      }
    }
  }

  private observe(it: ReplicaIntent & { kind: 'observe' }): void {
    const o = this.opts.observe;
    if (!o) return;
    if (it.what === 'request') o.request(it.type, it.ms);
    else if (it.what === 'resume') o.resume(it.outcome);
    else if (it.what === 'write-applied') o.writeApplied();
    else o.badFrame();
  }

  /** Run one store call for the core; its answer (or why it failed) goes back in as `store-done`. */
  private run(call: number, w: StoreCall): void {
    let p: Promise<unknown>;
    try {
      p = this.storeCall(w);
    } catch (err) {
      // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- what the store threw, passed on as it is (failureOf reads its class)
      p = Promise.reject(err);
    }
    p.then(
      (value) => this.feed({ type: 'store-done', call, answer: { ok: true, value } }),
      (err: unknown) => this.feed({ type: 'store-done', call, answer: { ok: false, failure: failureOf(err) } }),
    );
  }

  private storeCall(w: StoreCall): Promise<unknown> {
    const store = this.store;
    switch (w.op) {
      case 'open':
        return store.open(w.req);
      case 'resume':
        return store.resume(w.reqs);
      case 'write':
        return store.write(w.req);
      case 'read':
        return store.read(w.req);
      case 'extents':
        return store.extents(w.req);
      case 'close':
        return store.close(w.ref, w.session);
      case 'access':
        return store.editAccess(w.req);
      case 'renew':
        return store.renew(w.session, w.refs, w.leaseMs);
      case 'ping':
        return store.ping();
    }
  }
}

/** A store call's failure as the core takes it. */
function failureOf(err: unknown): StoreFailure {
  if (err instanceof StoreUnavailableError)
    return { kind: 'unavailable', message: err.message, maybeApplied: err.maybeApplied };
  if (err instanceof SafeResumeError) return { kind: 'refused', code: err.code, message: err.message };
  return { kind: 'internal', error: err };
}
