/**
 * The application SDK: what a real Node program uses.
 *
 *   const app = new Application(agent, { name: 'vm-42' });
 *   const h = await app.open('vm42.disk', { mode: 'write' });
 *   await h.write(0, bytes);            // waits while paused, rejects with a typed error if invalidated
 *   h.on('invalidated', (reason) => …); // MODIFIED: reload before writing again
 */
import { EventEmitter } from 'node:events';
import { createActor, type Actor } from 'xstate';
import { SafeResumeError, type ErrorCode, type InvalidationReason } from '../errors.js';
import { appHandleMachine } from '../machines/app-handle.js';
import { MAX_IO_BYTES } from '../transport/messages.js';
import { defaultEnv, handleHolder, type Env, type HandleHolder } from './env.js';
import type { AgentHandle, HandleListener, NodeAgent, Op } from './node-agent.js';

export interface ApplicationOptions {
  /** Stable name of the application on its node; kept requestIds are found under it. */
  name: string;
  /** The principal requestIds are bound to. */
  principal?: string;
  pauseTimeoutMs?: number;
  env?: Partial<Env>;
}

export interface OpenOptions {
  mode?: 'read' | 'write';
  /** `pause` (default): I/O waits through failures. `error`: I/O fails fast with UNAVAILABLE. */
  onFailure?: 'pause' | 'error';
  /** Reclaim this requestId (e.g. after moving to another node) instead of opening afresh. */
  requestId?: string;
  pauseTimeoutMs?: number;
}

export type HandleState = 'opening' | 'active' | 'paused' | 'resuming' | 'invalidated' | 'closing' | 'closed';

export interface HandleEvents {
  paused: [];
  resumed: [];
  invalidated: [reason: InvalidationReason];
  state: [state: HandleState];
}

type Queued = { run: (agentHandle: AgentHandle) => void; reject: (e: Error) => void };

/** The handle behind an actor, for the machine's actions (one machine serves every handle). */
const owners = new WeakMap<object, Handle>();
const owner = (self: object): Handle => owners.get(self)!;

/** The application handle machine with its actions, made once: each handle is only an actor of it. */
const handleMachine = appHandleMachine.provide({
  actions: {
    dispatchIo: ({ self }) => owner(self).act('dispatchIo'),
    rejectIo: ({ self, context }) => owner(self).act('rejectIo', context.reason),
    rejectIoUnavailable: ({ self }) => owner(self).act('rejectIoUnavailable'),
    flushQueue: ({ self }) => owner(self).act('flushQueue'),
    failAll: ({ self, context }) => owner(self).act('failAll', context.reason),
    failInFlight: ({ self }) => owner(self).act('failInFlight'),
    notifyPaused: ({ self }) => owner(self).emit('paused'),
    notifyResumed: ({ self }) => owner(self).emit('resumed'),
    notifyInvalidated: ({ self, context }) => owner(self).act('notifyInvalidated', context.reason),
    sendClose: ({ self }) => owner(self).act('sendClose'),
  },
});

type Action = 'dispatchIo' | 'rejectIo' | 'rejectIoUnavailable' | 'flushQueue' | 'failAll' | 'failInFlight' | 'notifyInvalidated' | 'sendClose';

export class Handle extends EventEmitter<HandleEvents> {
  readonly target: string;
  readonly mode: 'read' | 'write';
  readonly requestId: string;
  /** @internal */
  readonly actor: Actor<typeof handleMachine>;
  private readonly queue: Queued[] = [];
  private agentHandle: AgentHandle | undefined;

  /** @internal */
  constructor(
    private readonly agent: NodeAgent,
    init: { target: string; mode: 'read' | 'write'; requestId: string; onFailure: 'pause' | 'error'; pauseTimeoutMs: number },
    private readonly holder: HandleHolder,
  ) {
    super();
    this.target = init.target;
    this.mode = init.mode;
    this.requestId = init.requestId;
    this.actor = createActor(handleMachine, { parent: holder.parent, input: init });
    owners.set(this.actor, this);
    let last: HandleState = 'opening';
    this.actor.subscribe((snap) => {
      const state = snap.value as HandleState;
      if (state !== last) {
        last = state;
        this.emit('state', state);
      }
    });
    this.actor.start();
  }

  /** @internal What the machine's actions do for this handle. */
  act(action: Action, reason?: InvalidationReason): void {
    switch (action) {
      case 'dispatchIo':
        return this.dispatch(this.queue.shift());
      case 'rejectIo':
        return this.queue.pop()?.reject(this.failure(reason));
      case 'rejectIoUnavailable':
        return this.queue.pop()?.reject(new SafeResumeError('UNAVAILABLE', `${this.target}: storage unavailable and the handle fails fast`));
      case 'flushQueue':
        for (const q of this.queue.splice(0)) this.dispatch(q);
        return;
      case 'failAll': {
        const err = this.failure(reason);
        for (const q of this.queue.splice(0)) q.reject(err);
        return;
      }
      case 'failInFlight': {
        const err = new SafeResumeError('UNAVAILABLE', `storage unavailable; ${this.target} fails fast (onFailure: 'error'); outcome of in-flight writes unknown`);
        for (const q of this.queue.splice(0)) q.reject(err);
        if (this.agentHandle) this.agent.failOps(this.agentHandle, 'UNAVAILABLE', err.message);
        return;
      }
      case 'notifyInvalidated': {
        const why = reason ?? 'MODIFIED';
        if (this.agentHandle) this.agent.abandon(this.agentHandle, why, `${this.target}: handle invalidated (${why})`);
        this.emit('invalidated', why);
        return;
      }
      case 'sendClose': {
        const h = this.agentHandle;
        if (!h) return void this.actor.send({ type: 'CLOSED' });
        void this.agent.close(h).then(() => this.actor.send({ type: 'CLOSED' }));
        return;
      }
    }
  }

  get state(): HandleState {
    return this.actor.getSnapshot().value as HandleState;
  }

  /** Why the handle was invalidated, once it is. */
  get reason(): InvalidationReason | undefined {
    return this.actor.getSnapshot().context.reason;
  }

  write(offset: number, data: Uint8Array): Promise<{ version: number }> {
    if (this.mode !== 'write') return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', `${this.target} is open for reading`));
    if (!Number.isSafeInteger(offset) || offset < 0) return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', 'offset must be a non-negative integer'));
    if (!(data instanceof Uint8Array) || data.length > MAX_IO_BYTES) return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', `data must be a Uint8Array of at most ${MAX_IO_BYTES} bytes`));
    const copy = data.slice(); // the caller may reuse its buffer once write() returns
    return this.io<{ version: number }>((resolve, reject) => (h) => {
      const op: Op = { kind: 'write', seq: this.agent.nextSeq(h), offset, data: copy, resolve, reject };
      this.agent.submit(h, op);
    });
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || length > MAX_IO_BYTES) {
      return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', `offset must be >= 0 and length between 0 and ${MAX_IO_BYTES}`));
    }
    return this.io<{ data: Uint8Array; version: number }>((resolve, reject) => (h) => {
      this.agent.submit(h, { kind: 'read', offset, length, resolve, reject });
    }).then((r) => r.data);
  }

  /** Release the lock and the record. Pending I/O rejects with CLOSED. */
  async close(): Promise<void> {
    if (this.actor.getSnapshot().status !== 'active') return;
    const done = new Promise<void>((resolve) => {
      const sub = this.actor.subscribe((s) => {
        if (s.status !== 'active') {
          sub.unsubscribe();
          resolve();
        }
      });
    });
    this.actor.send({ type: 'CLOSE' });
    if (this.state !== 'closed') await done;
    if (this.agentHandle && this.agentHandle.state !== 'gone') await this.agent.close(this.agentHandle);
  }

  /** @internal */
  crash(): void {
    if (this.agentHandle) this.agent.forgetQuietly(this.agentHandle);
    this.holder.stop(this.actor);
  }

  /** @internal */
  bind(h: AgentHandle): void {
    this.agentHandle = h;
  }

  private io<T>(make: (resolve: (v: T) => void, reject: (e: Error) => void) => (h: AgentHandle) => void): Promise<T> {
    if (this.actor.getSnapshot().status !== 'active') return Promise.reject(new SafeResumeError('CLOSED', `${this.target}: handle closed`));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ run: make(resolve, reject), reject });
      this.actor.send({ type: 'IO' });
    });
  }

  private dispatch(q: Queued | undefined): void {
    if (!q) return;
    if (!this.agentHandle) return q.reject(new SafeResumeError('CLOSED', 'handle is not open'));
    q.run(this.agentHandle);
  }

  private failure(reason: InvalidationReason | undefined): SafeResumeError {
    if (reason) return new SafeResumeError(reason, `${this.target}: handle invalidated (${reason})`);
    return new SafeResumeError('CLOSED', `${this.target}: handle closed`);
  }
}

/** What the node agent tells a handle, as events to its machine (one small object per handle, not five closures). */
class ToMachine implements HandleListener {
  constructor(private readonly actor: Actor<typeof handleMachine>) {}
  paused(): void {
    this.actor.send({ type: 'PAUSED' });
  }
  resuming(): void {
    this.actor.send({ type: 'RESUMING' });
  }
  granted(): void {
    this.actor.send({ type: 'GRANTED' });
  }
  denied(reason: InvalidationReason): void {
    this.actor.send({ type: 'DENIED', reason });
  }
  revoked(reason: InvalidationReason): void {
    this.actor.send({ type: 'INVALIDATE', reason });
  }
}

export class Application {
  readonly name: string;
  readonly principal: string;
  private readonly env: Env;
  private readonly holder: HandleHolder;
  private readonly handles = new Set<Handle>();

  constructor(readonly agent: NodeAgent, private readonly opts: ApplicationOptions) {
    if (!opts.name) throw new SafeResumeError('INVALID_ARGUMENT', 'an application needs a name');
    this.name = opts.name;
    this.principal = opts.principal ?? 'default';
    this.env = defaultEnv(opts.env);
    this.holder = handleHolder(this.env);
  }

  /**
   * Open a target. With no requestId, a requestId the node kept for this application and target
   * (from before an agent restart) is reclaimed; otherwise a fresh one is made. A reclaim is a
   * resume: it is denied with MODIFIED if another writer took the target meanwhile.
   */
  async open(target: string, options: OpenOptions = {}): Promise<Handle> {
    if (typeof target !== 'string' || target.length === 0 || target.length > 1024) throw new SafeResumeError('INVALID_ARGUMENT', 'target must be a non-empty string of at most 1024 characters');
    // A kept requestId is reclaimed only when nothing holds it now (it is left over from a restart).
    const found = options.requestId ? undefined : this.agent.findKept(this.name, target);
    const kept = found && !this.agent.holds(found.requestId) && (!options.mode || options.mode === found.mode) ? found : undefined;
    const requestId = options.requestId ?? kept?.requestId ?? this.env.newId();
    if (!/^[A-Za-z0-9_-]{21,64}$/.test(requestId)) throw new SafeResumeError('INVALID_ARGUMENT', 'requestId must be 21-64 URL-safe characters (use nanoid)');
    const mode = options.mode ?? kept?.mode ?? 'write';
    const handle = new Handle(
      this.agent,
      { target, mode, requestId, onFailure: options.onFailure ?? 'pause', pauseTimeoutMs: options.pauseTimeoutMs ?? this.opts.pauseTimeoutMs ?? 60_000 },
      this.holder,
    );
    try {
      const h = await this.agent.open({
        app: this.name,
        target,
        requestId,
        principal: this.principal,
        mode,
        how: options.requestId || kept ? 'resume' : 'open',
        // A kept requestId resumes as the instance it was; an explicit one takes over as a new instance.
        instance: kept?.instance ?? this.env.newId(),
        takeover: Boolean(options.requestId) || (kept !== undefined && !kept.instance),
        version: kept?.version ?? 0,
        listener: new ToMachine(handle.actor),
      });
      handle.bind(h);
      handle.actor.send({ type: 'OPENED' });
    } catch (err) {
      handle.actor.send({ type: 'OPEN_FAILED', code: err instanceof SafeResumeError ? err.code : 'INTERNAL' });
      throw err;
    }
    this.handles.add(handle);
    handle.on('state', (s) => s === 'closed' && this.handles.delete(handle));
    return handle;
  }

  list(): Handle[] {
    return [...this.handles];
  }

  /**
   * The application process died: its handles stop where they are, nothing is closed, their
   * promises never settle. The node agent forgets them (the locks lapse after the hold period).
   */
  crash(): void {
    for (const h of this.handles) h.crash();
    this.handles.clear();
  }
}

export type { ErrorCode };
