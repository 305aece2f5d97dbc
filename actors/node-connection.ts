/**
 * The node agent's session with the storage: the node-session machine run as an actor (connect,
 * heartbeats, failover), the handshake and the principals it proves, why attempts failed, and the
 * agent's start, stop and crash. What the session does to handles is the core's (core/agent.ts),
 * carried out by actors/node-intents.ts; the SDK's calls are in actors/node-agent.ts.
 */
import { createActor, fromPromise, type Actor } from 'xstate';
import { SafeResumeError } from '../errors.js';
import { AgentCore } from '../core/agent.js';
import type { CoreHandle } from '../core/handle.js';
import { backoffDelay, nodeSessionMachine, type Connected } from '../machines/node-session.js';
import { DEFAULT_HEARTBEAT_INTERVAL_MS } from '../transport/messages.js';
import { actorLog, defaultEnv, type Env } from './env.js';
import { handshake, proveFrame, type SessionProof } from './handshake.js';
import { issueCredential, type Credential } from './auth.js';
import { FileKeptIds, MemoryKeptIds, type KeptIds } from './kept.js';
import { HandleMirrors } from './mirror.js';
import { LogLimiter } from './log-limit.js';
import { NodeAgentIntents } from './node-intents.js';
import { causeOf, lostWhy, type ConnectCause, type NodeAgentOptions } from './node-agent-types.js';

export abstract class NodeAgentConnection extends NodeAgentIntents {
  readonly id: string;
  readonly kept: KeptIds;
  readonly core: AgentCore;
  protected readonly env: Env;
  protected readonly opts: NodeAgentOptions;
  protected readonly session: Actor<typeof nodeSessionMachine>;
  protected readonly mirrors: HandleMirrors | undefined;
  private watchdog: unknown;
  private started = false;
  private readonly credential: Credential;
  /** Principal credentials this node speaks for, by name. */
  protected readonly principals = new Map<string, Credential>();
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
    if (opts.replicas.length === 0)
      throw new SafeResumeError('INVALID_ARGUMENT', 'a node agent needs at least one replica address');
    this.opts = opts;
    this.id = opts.id;
    if (opts.credential) {
      if (opts.credential.kind !== 'node' || opts.credential.name !== opts.id) {
        throw new SafeResumeError(
          'INVALID_ARGUMENT',
          `node agent ${opts.id} was given the ${opts.credential.kind} credential of ${JSON.stringify(opts.credential.name)}; issue one with \`safe-resume credentials issue --node ${opts.id}\``,
        );
      }
      this.credential = opts.credential;
    } else if (opts.secret) this.credential = issueCredential(opts.secret, 'node', opts.id);
    else
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `node agent ${opts.id} needs its node credential (credential) or the cluster key (secret)`,
      );
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
        pauseHandles: ({ context, event }) =>
          this.step({
            type: 'unavailable',
            why: event.type === 'STORAGE_UNAVAILABLE' ? 'notice unavailable' : lostWhy(context.lastError, event),
          }),
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
      delays: {
        backoff: ({ context }) => backoffDelay(context.attempt, context.backoffBaseMs, context.backoffMaxMs, random()),
      },
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
      else if (snap.matches('reconnecting') && /^(AUTH_FAILED|INVALID_ARGUMENT)/.test(snap.context.lastError ?? ''))
        this.settleStart(
          new SafeResumeError(
            snap.context.lastError!.startsWith('AUTH') ? 'AUTH_FAILED' : 'INVALID_ARGUMENT',
            snap.context.lastError,
          ),
        );
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
      this.env.log.warn(
        { err: counted.error, boot: counted.boot },
        'the count of agent starts could not be read or kept on disk; until it is, a late request from before this start could take a handle back',
      );
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
    const said =
      causes.length > 0
        ? causes
            .map((c) => `${c.cause} from ${c.replica}: ${c.message.replace(`cannot connect to ${c.replica}: `, '')}`)
            .join('; ')
        : `no attempt finished yet (connecting to ${this.opts.replicas.join(', ')})`;
    const err = new SafeResumeError(
      'UNAVAILABLE',
      `node ${this.id} could not connect to any replica within ${ms} ms: ${said}`,
    ) as SafeResumeError & { causes: ConnectCause[] };
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
    if (this.failedAttempts > 0)
      this.env.log.info({ replica: this.replica, attempts: this.failedAttempts }, 'connected after failed attempts');
    this.causes.clear();
    this.failedAttempts = 0;
    this.lastConnectCause = undefined;
  }

  /** A failed attempt: logged (rate-limited) with its cause; a round over every replica is an event. */
  private connectFailed(url: string, err: unknown): void {
    if (this.stopped) return;
    const c: ConnectCause = {
      replica: url,
      cause: causeOf(err),
      message: err instanceof Error ? err.message : String(err),
    };
    this.causes.delete(url);
    this.causes.set(url, c);
    this.lastConnectCause = c;
    this.failedAttempts++;
    const take = this.connectLog.take('connect');
    if (take.log)
      this.env.log.warn(
        {
          replica: url,
          cause: c.cause,
          err: c.message,
          attempt: this.failedAttempts,
          ...(take.suppressed > 0 ? { suppressed: take.suppressed } : {}),
        },
        `could not connect to ${url}: ${c.cause}`,
      );
    const n = this.opts.replicas.length;
    if (this.failedAttempts % n === 0)
      this.emit('connect-failed', { round: this.failedAttempts / n, causes: this.connectCauses });
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

  /** Close a handle (the SDK's call; stop closes every open one). */
  abstract close(h: CoreHandle): Promise<void>;

  /**
   * Speak for a principal from now on: its proof goes to the replica of the current session at once
   * (before any open that names it) and into every later handshake.
   */
  addPrincipal(c: Credential): void {
    if (c.kind !== 'principal')
      throw new SafeResumeError('INVALID_ARGUMENT', `a ${c.kind} credential (${c.name}) is not a principal's`);
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
    this.env.log.error(
      { principal: name },
      "the storage refused this principal's credential; its applications cannot open anything until a valid one is given",
    );
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
        if (!frame.ok)
          return void this.env.log.warn({ code: frame.code, message: frame.message }, 'bad frame from replica');
        // Liveness and storage notices drive the session; everything else is the protocol's.
        const msg = frame.msg;
        if (msg.type === 'error' && msg.principal !== undefined && msg.id === undefined)
          return this.refusePrincipal(msg.principal);
        if (msg.type === 'pong') this.session.send({ type: 'HEARD' });
        else if (msg.type === 'notice')
          this.session.send({ type: msg.kind === 'unavailable' ? 'STORAGE_UNAVAILABLE' : 'STORAGE_AVAILABLE' });
        else this.step({ type: 'frame', msg });
      },
    });
  }
}
