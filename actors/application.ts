/**
 * The application SDK: what a real Node program uses.
 *
 *   const app = new Application(agent, { name: 'vm-42' });
 *   const h = await app.open('vm42.disk', { mode: 'write' });
 *   await h.write(0, bytes);            // waits while paused, rejects with a typed error if invalidated
 *   h.on('invalidated', (reason) => …); // MODIFIED: reload before writing again
 *
 * A handle is a view of the node agent's core handle (core/handle.ts): its state, its operations
 * and their promises live there; this class validates arguments and turns the core's reports into
 * events.
 */
import { SafeResumeError, type ChangedRanges, type ErrorCode, type InvalidationReason } from '../errors.js';
import {
  EMPTY,
  type CoreHandle,
  type HandleOwner,
  type HandleState,
  type LifecycleEvent,
  type OpResult,
} from '../core/handle.js';
import { MAX_IO_BYTES, NAME_PATTERN } from '../transport/messages.js';
import { MAX_DISK_BYTES } from '../store/types.js';
import { LazyEmitter } from './emitter.js';
import { defaultEnv, type Env } from './env.js';
import type { NodeAgent } from './node-agent.js';
import type { Credential } from './auth.js';

export type { HandleState };

export interface ApplicationOptions {
  /** Stable name of the application on its node; kept requestIds are found under it. */
  name: string;
  /**
   * The principal's credential (`safe-resume credentials issue --principal NAME`): requestIds are
   * bound to its name, and the node proves it to the storage without sending the key.
   */
  credential?: Credential;
  /**
   * The principal by name, without a credential: the node agent must hold that principal's
   * credential already (its `principals`, or the cluster key). Default `default`.
   */
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
  /**
   * The target's size in bytes, for a disk: a write open of a target never written creates it with
   * this size (it reads as zeros; writes past its end are refused); an existing target must have been
   * created with the same size. Up to 1 TiB on SQLite and etcd (pages never written cost nothing),
   * 64 MiB on the memory store. Without it a target grows as it is written, up to 64 MiB.
   */
  size?: number;
}

export interface HandleEvents {
  paused: [];
  resumed: [];
  invalidated: [reason: InvalidationReason];
  state: [state: HandleState];
  /**
   * The node could not (false) or again could (true) write this handle's requestId to its
   * node-local file; while false, a restart of the node agent may not be able to resume the handle.
   */
  durability: [durable: boolean, reason: string | undefined];
}

export class Handle extends LazyEmitter<HandleEvents> implements HandleOwner {
  /** @internal */
  core!: CoreHandle;

  /** @internal */
  constructor(
    private readonly agent: NodeAgent,
    private readonly app: Application,
  ) {
    super();
  }

  get target(): string {
    return this.core.target;
  }

  get mode(): 'read' | 'write' {
    return this.core.mode;
  }

  get requestId(): string {
    return this.core.requestId;
  }

  get state(): HandleState {
    return this.core.state;
  }

  /** The target's size, fixed when it was created (a disk); undefined if it has none. */
  get size(): number | undefined {
    return this.core.size || undefined;
  }

  /**
   * The target's version this handle last saw: at its open or latest resume, or at its latest read
   * (a reader resumes only if it is unchanged).
   */
  get version(): number {
    return this.core.version;
  }

  /** Why the handle was invalidated, once it is. */
  get reason(): InvalidationReason | undefined {
    return this.core.reason;
  }

  /**
   * Once a resume was denied MODIFIED: the byte ranges another writer changed since the version this
   * handle last saw (as the store said; undefined if it could not tell). Also on the errors its
   * operations reject with (`err.changed`, `err.coarse`).
   */
  get changes(): ChangedRanges | undefined {
    return this.core.changed;
  }

  /** Whether the node holds this handle's requestId on disk (so an agent restart can resume it). */
  get durable(): boolean {
    return this.core.durable;
  }

  /** @internal The core's report of a lifecycle step. */
  changed(from: HandleState, to: HandleState, event: LifecycleEvent): void {
    if (to === 'paused') this.emit('paused');
    else if (event === 'GRANTED') this.emit('resumed');
    else if (to === 'invalidated') this.emit('invalidated', this.core.reason ?? 'MODIFIED');
    if (to !== from) this.emit('state', to);
    if (to === 'closed') this.app.forget(this);
  }

  /** @internal */
  durability(durable: boolean, reason: string | undefined): void {
    this.emit('durability', durable, reason);
  }

  write(offset: number, data: Uint8Array): Promise<{ version: number }> {
    if (this.mode !== 'write')
      return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', `${this.target} is open for reading`));
    if (!Number.isSafeInteger(offset) || offset < 0)
      return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', 'offset must be a non-negative integer'));
    if (!(data instanceof Uint8Array) || data.length > MAX_IO_BYTES)
      return Promise.reject(
        new SafeResumeError('INVALID_ARGUMENT', `data must be a Uint8Array of at most ${MAX_IO_BYTES} bytes`),
      );
    // The caller may reuse its buffer once write() returns. A copy, never a view: a Node Buffer's
    // slice() is a view of the same memory.
    const copy = new Uint8Array(data);
    return this.submit('write', offset, copy, 0);
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    if (
      !Number.isSafeInteger(offset) ||
      offset < 0 ||
      !Number.isSafeInteger(length) ||
      length < 0 ||
      length > MAX_IO_BYTES
    ) {
      return Promise.reject(
        new SafeResumeError('INVALID_ARGUMENT', `offset must be >= 0 and length between 0 and ${MAX_IO_BYTES}`),
      );
    }
    return this.submit('read', offset, undefined, length).then((r) => r.data ?? EMPTY);
  }

  /**
   * Which parts of `[offset, offset + length)` the target keeps: `kept` lists them as `[offset, length]`,
   * in order; everything else of `[offset, end)` reads as zeros (the store keeps no page that is all
   * zeros). `end` may stop short of the range asked (the store lists a bounded number of pages per
   * answer): ask again from `end` for the rest. From the store, not from reading the data. A read handle
   * and a write handle both may ask; while the handle is paused it waits, as a read does.
   */
  extents(offset: number, length: number): Promise<{ kept: Array<[number, number]>; end: number }> {
    if (
      !Number.isSafeInteger(offset) ||
      offset < 0 ||
      !Number.isSafeInteger(length) ||
      length < 0 ||
      !Number.isSafeInteger(offset + length)
    ) {
      return Promise.reject(
        new SafeResumeError('INVALID_ARGUMENT', 'offset and length must be integers >= 0 whose sum is a safe integer'),
      );
    }
    return this.submit('extents', offset, undefined, length).then((r) => ({
      kept: r.kept ?? [],
      end: r.end ?? offset + length,
    }));
  }

  /** Hand one read, write or extents request to the node agent; settled when it is answered. */
  private submit(kind: 'read' | 'write' | 'extents', offset: number, data: Uint8Array | undefined, length: number) {
    return new Promise<OpResult>((resolve, reject) => {
      this.agent.io(this.core, {
        kind,
        seq: 0,
        offset,
        data,
        length,
        inflight: 0,
        sent: false,
        resends: 0,
        settle: { resolve, reject },
      });
    });
  }

  /**
   * Release the lock and the record. Writes already sent are answered first; what has not been
   * sent rejects with CLOSED.
   */
  close(): Promise<void> {
    return this.agent.close(this.core);
  }
}

export class Application {
  readonly name: string;
  readonly principal: string;
  private readonly env: Env;
  private readonly handles = new Set<Handle>();

  constructor(
    readonly agent: NodeAgent,
    private readonly opts: ApplicationOptions,
  ) {
    if (!opts.name) throw new SafeResumeError('INVALID_ARGUMENT', 'an application needs a name');
    this.name = opts.name;
    if (opts.credential) {
      if (opts.principal !== undefined && opts.principal !== opts.credential.name)
        throw new SafeResumeError(
          'INVALID_ARGUMENT',
          `principal ${JSON.stringify(opts.principal)} does not match the credential of ${JSON.stringify(opts.credential.name)}`,
        );
      agent.addPrincipal(opts.credential);
      this.principal = opts.credential.name;
    } else {
      this.principal = opts.principal ?? 'default';
      agent.usePrincipal(this.principal);
    }
    this.env = defaultEnv(opts.env);
  }

  /**
   * Open a target. With no requestId, a requestId the node kept for this application and target
   * (from before an agent or application restart) is reclaimed; otherwise a fresh one is made. A
   * reclaim is a resume: it is denied with MODIFIED if another writer took the target meanwhile.
   */
  async open(target: string, options: OpenOptions = {}): Promise<Handle> {
    if (typeof target !== 'string' || target.length === 0 || target.length > 1024)
      throw new SafeResumeError('INVALID_ARGUMENT', 'target must be a non-empty string of at most 1024 characters');
    if (options.requestId !== undefined && !/^[A-Za-z0-9_-]{21,64}$/.test(options.requestId))
      throw new SafeResumeError('INVALID_ARGUMENT', 'requestId must be 21-64 URL-safe characters (use nanoid)');
    if (
      options.size !== undefined &&
      (!Number.isSafeInteger(options.size) || options.size < 1 || options.size > MAX_DISK_BYTES)
    )
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `size must be a whole number of bytes between 1 and ${MAX_DISK_BYTES}`,
      );
    // A kept requestId is reclaimed only when nothing holds it now (it is left over from a restart).
    const found = this.agent.findKept(this.name, target);
    const usable =
      found &&
      !this.agent.holds(found.requestId) &&
      (!options.mode || options.mode === found.mode) &&
      (!options.requestId || options.requestId === found.requestId);
    const kept = usable ? found : undefined;
    const requestId = options.requestId ?? kept?.requestId ?? this.env.newId();
    const handle = new Handle(this.agent, this);
    const { h, opened } = this.agent.open({
      app: this.name,
      target,
      requestId,
      principal: this.principal,
      mode: options.mode ?? kept?.mode ?? 'write',
      onFailure: options.onFailure ?? 'pause',
      pauseTimeoutMs: options.pauseTimeoutMs ?? this.opts.pauseTimeoutMs ?? 60_000,
      // A kept requestId resumes as the instance it was; an explicit one takes over as a new instance.
      instance: kept?.instance ?? this.env.newId(),
      how: options.requestId || kept ? 'resume' : 'open',
      takeover: kept ? (kept.takeover ?? !kept.instance) : Boolean(options.requestId),
      version: kept?.version ?? 0,
      size: options.size ?? 0,
      owner: handle,
    });
    handle.core = h;
    await opened;
    // A reclaimed requestId resumes without naming a size: the target's must still be the one asked for.
    if (options.size !== undefined && handle.state !== 'closed' && handle.size !== options.size) {
      await handle.close().catch(() => {});
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `${target} was created with ${handle.size === undefined ? 'no fixed size' : `a size of ${handle.size} bytes`}, not ${options.size}`,
      );
    }
    if (handle.state !== 'closed') this.handles.add(handle);
    return handle;
  }

  /**
   * Let `principal` open `target` (which this application's principal owns) for reading, or for
   * writing and reading; replaces what it had. Resolves with the target's owner and access list.
   * Refused FORBIDDEN if this principal does not own the target (the same answer whether another
   * principal owns it or nobody has it).
   */
  grant(target: string, principal: string, mode: 'read' | 'write'): Promise<TargetAccessList> {
    const bad =
      accessArgs(target, principal) ??
      (mode !== 'read' && mode !== 'write' ? `mode must be 'read' or 'write', not ${JSON.stringify(mode)}` : undefined);
    if (bad) return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', bad));
    return this.agent.access({ target, principal: this.principal, grantee: principal, mode });
  }

  /**
   * Take `principal`'s access to `target` away. Its next open or resume of the target is refused
   * FORBIDDEN; a handle it has open keeps working until it closes or pauses.
   */
  revoke(target: string, principal: string): Promise<TargetAccessList> {
    const bad = accessArgs(target, principal);
    if (bad) return Promise.reject(new SafeResumeError('INVALID_ARGUMENT', bad));
    return this.agent.access({ target, principal: this.principal, grantee: principal, mode: 'none' });
  }

  /** @internal A closed handle is no longer the application's. */
  forget(h: Handle): void {
    this.handles.delete(h);
  }

  list(): Handle[] {
    return [...this.handles];
  }

  /** Close every handle of this application (each as `handle.close()` does). */
  async close(): Promise<void> {
    await Promise.allSettled(this.list().map((h) => h.close()));
  }

  /**
   * The application process died: its handles stop where they are, nothing is closed, their
   * promises never settle. The node agent forgets them but keeps their requestIds, so the
   * application, started again, resumes them (SPEC failure 6).
   */
  crash(): void {
    for (const h of this.handles) this.agent.appGone(h.core);
    this.handles.clear();
  }
}

/** Who may open a target: its owner, and the principals it granted read or write access. */
export interface TargetAccessList {
  owner: string;
  grants: Array<{ principal: string; mode: 'read' | 'write' }>;
}

/** Why a target and principal cannot be named in a grant or revocation (undefined: they can). */
function accessArgs(target: unknown, principal: unknown): string | undefined {
  if (typeof target !== 'string' || target.length === 0 || target.length > 1024)
    return 'target must be a non-empty string of at most 1024 characters';
  if (typeof principal !== 'string' || !NAME_PATTERN.test(principal))
    return 'principal must be 1-128 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)';
  return undefined;
}

export type { ErrorCode };
