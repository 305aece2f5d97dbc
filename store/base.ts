/** A store whose rules run in synchronous transactions of the adapter (memory, SQLite). */
import * as rules from './rules.js';
import type {
  AccessRequest,
  AccessResult,
  HandleRef,
  LockRecord,
  Tombstone,
  OpenRequest,
  OpenResult,
  ExtentsRequest,
  ExtentsResult,
  ReadRequest,
  ReadResult,
  RenewResult,
  ResumeOutcome,
  ResumeRequest,
  Store,
  TargetAccess,
  WriteRequest,
  WriteResult,
} from './types.js';
import { StoreUnavailableError } from './types.js';

/**
 * The store contract, synchronous: each call is one transaction (committed when it returns, unless
 * it runs inside `commit`). Lock expiries are set and compared on the store's own clock.
 */
export interface SyncStore {
  open(req: OpenRequest): OpenResult;
  resume(reqs: ResumeRequest[]): ResumeOutcome[];
  write(req: WriteRequest): WriteResult;
  read(req: ReadRequest): ReadResult;
  extents(req: ExtentsRequest): ExtentsResult;
  close(ref: HandleRef, session: string): boolean;
  renew(session: string, refs: HandleRef[], leaseMs: number): RenewResult;
  editAccess(req: AccessRequest): AccessResult;
}

/**
 * Thrown by an adapter's `tx` when another process holds the store's write lock, so the transaction
 * did not run. TxStore retries it later instead of waiting with the event loop blocked; a caller
 * that sees it anyway sees a StoreUnavailableError.
 */
export class StoreBusyError extends StoreUnavailableError {
  constructor(message: string) {
    super(message);
    this.name = 'StoreBusyError';
  }
}

/**
 * The clock TxStore schedules its flushes and busy retries on. The real one is Node's; a simulation
 * passes its simulated clock, so a store's group commits and busy waits happen in simulated time.
 */
export interface StoreTimers {
  /** Run `fn` once the operations of the current turn have arrived (the group commit's flush). */
  defer(fn: () => void): void;
  /** Run `fn` after `ms` milliseconds (the next attempt at a busy store). */
  after(ms: number, fn: () => void): void;
  /** Milliseconds on a monotonic clock (the busy wait's bound). */
  now(): number;
}

/** Node's event loop and monotonic clock. */
export const realTimers: StoreTimers = {
  defer: (fn) => void setImmediate(fn),
  after: (ms, fn) => void setTimeout(fn, ms),
  now: () => performance.now(),
};

interface Queued {
  fn: () => unknown;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  /** When it was first tried or queued (`timers.now()`), for the busy wait's bound. */
  since: number;
}

/** Longest pause between two attempts at a busy store. */
const BUSY_RETRY_MAX_MS = 20;

export abstract class TxStore implements Store {
  abstract readonly kind: string;
  /**
   * Run `fn` as one atomic transaction; throw StoreUnavailableError when storage cannot be reached,
   * StoreBusyError (without having run `fn`) when another process holds the store for now.
   */
  protected abstract tx<T>(fn: (tx: rules.Tx) => T): T;
  abstract ping(): Promise<void>;
  abstract shutdown(): Promise<void>;
  /**
   * Group commit: operations that arrive in the same turn of the event loop run in one transaction,
   * each in its own savepoint, and are answered after it commits. Off, each is its own transaction.
   */
  protected groupCommit = false;
  /** How long an operation retries a busy store before failing as unavailable. */
  protected busyWaitMs = 1000;
  /** Where flushes and busy retries are scheduled and the busy wait is measured. */
  protected timers: StoreTimers = realTimers;
  /**
   * The store's own clock (its host's wall clock, ms since the epoch): every lock expiry is set and
   * compared on it, read when the rule runs, never on a replica's clock.
   */
  protected clockNow: () => number = () => Date.now();

  /** Now on the store's clock, on which lock expiries are set (for explaining a lock, not for deciding). */
  storeNow(): number {
    return this.clockNow();
  }
  /** Operations not yet committed, in arrival order (they commit in this order). */
  private queue: Queued[] = [];
  /** A flush is due (next turn, or after a busy pause). */
  private scheduled = false;
  private busyDelayMs = 0;
  /**
   * Where `afterCommit` puts its callbacks while a transaction runs (a fresh list per attempt, so a
   * failed or retried attempt's callbacks never reach a later one); undefined outside a transaction.
   */
  private effects: Array<() => void> | undefined;
  private readonly flushNow = () => this.flush();
  /** Transactions committed and the operations they carried (a group commit carries many). */
  readonly commits = { transactions: 0, operations: 0 };
  /** Told how long each committed transaction took (for metrics); unset, nothing is timed. */
  onTransaction: ((ms: number) => void) | undefined;

  /** `this.tx`, timed when someone listens. */
  private timedTx<T>(fn: (tx: rules.Tx) => T): T {
    const listen = this.onTransaction;
    if (!listen) return this.tx(fn);
    const t0 = performance.now();
    const v = this.tx(fn);
    listen(performance.now() - t0);
    return v;
  }

  readonly sync: SyncStore = {
    open: (req) => this.tx((t) => rules.open(t, req, this.clockNow())),
    resume: (reqs) =>
      this.tx((t) => {
        const now = this.clockNow();
        return reqs.map((r) => rules.resume(t, r, now));
      }),
    write: (req) => this.tx((t) => rules.write(t, req)),
    read: (req) => this.tx((t) => rules.read(t, req)),
    extents: (req) => this.tx((t) => rules.extents(t, req)),
    close: (ref, session) => this.tx((t) => rules.close(t, ref, session)),
    renew: (session, refs, leaseMs) => this.tx((t) => rules.renew(t, session, refs, leaseMs, this.clockNow())),
    editAccess: (req) => this.tx((t) => rules.editAccess(t, req)),
  };

  /**
   * Run `fn` (which may call `sync` rules, and record what they decided) atomically and durably:
   * the promise settles after the transaction that carried it commits. With group commit, in the
   * next group; otherwise now, on its own. While another process holds the store, the transaction
   * is retried on timers for up to `busyWaitMs` (operations keep their order), then it fails with
   * StoreUnavailableError.
   */
  commit<T>(fn: () => T): Promise<T> {
    if (!this.groupCommit && this.queue.length === 0) {
      // Called from inside another operation, its callbacks go with that operation's transaction.
      const outer = this.effects;
      const effects = outer ?? [];
      const mark = effects.length;
      this.effects = effects;
      try {
        const v = outer ? this.tx(() => fn()) : this.timedTx(() => fn());
        this.effects = outer;
        this.commits.transactions++;
        this.commits.operations++;
        if (!outer) runEffects(effects);
        return Promise.resolve(v);
      } catch (err) {
        effects.length = mark;
        this.effects = outer;
        // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- what the transaction threw, passed on as it is
        if (!(err instanceof StoreBusyError)) return Promise.reject(err);
      }
    }
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject, since: this.timers.now() });
      if (!this.scheduled) {
        this.scheduled = true;
        if (this.groupCommit) this.timers.defer(this.flushNow);
        else this.retryLater();
      }
    });
  }

  /**
   * Run `cb` once the transaction that carries the calling operation has committed: call it from
   * inside a `commit` callback (to record what the store decided only once it is durable). The
   * callbacks run synchronously right after the commit, in the order their operations ran, before
   * any of their promises settle. They are dropped if their operation throws (its savepoint is
   * undone) or its transaction fails (busy, unavailable, I/O error); a retried transaction runs its
   * operations again, which register again. Outside any transaction, `cb` runs at once. A callback
   * that throws does not undo the commit: the other callbacks still run, the operations still
   * settle, and its error is thrown again from a microtask.
   */
  afterCommit(cb: () => void): void {
    if (this.effects) this.effects.push(cb);
    else runEffects([cb]);
  }

  private flush(): void {
    this.scheduled = false;
    if (this.groupCommit) this.flushGroup();
    else this.flushEach();
  }

  /** Every queued operation in one transaction, each in its own savepoint. */
  private flushGroup(): void {
    const batch = this.queue;
    this.queue = [];
    const results: Array<{ ok: true; value: unknown } | { ok: false; error: unknown }> = [];
    const effects: Array<() => void> = [];
    const outer = this.effects;
    this.effects = effects;
    try {
      this.timedTx(() => {
        for (const q of batch) {
          const mark = effects.length;
          try {
            // A nested transaction is a savepoint: an operation that throws undoes only itself.
            results.push({ ok: true, value: this.tx(() => q.fn()) });
          } catch (error) {
            effects.length = mark;
            if (error instanceof StoreUnavailableError) throw error;
            results.push({ ok: false, error });
          }
        }
      });
    } catch (err) {
      // Nothing of this attempt committed: its callbacks go with it.
      this.effects = outer;
      if (err instanceof StoreBusyError && !this.waitedTooLong(batch[0]!)) {
        // Nothing ran: the same operations, and whatever arrives meanwhile, go in the next attempt.
        this.queue = batch.concat(this.queue);
        return this.retryLater();
      }
      this.busyDelayMs = 0;
      const reason = this.gaveUp(err);
      for (const q of batch) q.reject(reason);
      return;
    }
    this.effects = outer;
    this.busyDelayMs = 0;
    this.commits.transactions++;
    this.commits.operations += batch.length;
    runEffects(effects);
    batch.forEach((q, i) => {
      const r = results[i]!;
      if (r.ok) q.resolve(r.value);
      else q.reject(r.error);
    });
  }

  /** Queued operations one transaction each, in order, until the store is busy again. */
  private flushEach(): void {
    while (this.queue.length > 0) {
      const q = this.queue[0]!;
      const effects: Array<() => void> = [];
      const outer = this.effects;
      this.effects = effects;
      try {
        const v = this.timedTx(() => q.fn());
        this.effects = outer;
        this.commits.transactions++;
        this.commits.operations++;
        this.queue.shift();
        runEffects(effects);
        q.resolve(v);
      } catch (err) {
        this.effects = outer;
        if (err instanceof StoreBusyError) {
          if (!this.waitedTooLong(q)) return this.retryLater();
          // Unavailable: everything behind it fails too, so no later operation overtakes it.
          const failed = this.queue;
          this.queue = [];
          this.busyDelayMs = 0;
          const reason = this.gaveUp(err);
          for (const f of failed) f.reject(reason);
          return;
        }
        this.queue.shift();
        q.reject(err);
      }
    }
    this.busyDelayMs = 0;
  }

  /** A store still busy after the whole wait counts as unavailable. */
  private gaveUp(err: unknown): unknown {
    return err instanceof StoreBusyError
      ? new StoreUnavailableError(`${err.message} (still busy after ${this.busyWaitMs} ms)`)
      : err;
  }

  private waitedTooLong(q: Queued): boolean {
    return this.timers.now() - q.since >= this.busyWaitMs;
  }

  /** Try the queue again after a pause that grows while the store stays busy. */
  private retryLater(): void {
    this.scheduled = true;
    this.busyDelayMs = Math.min(BUSY_RETRY_MAX_MS, Math.max(1, 2 * this.busyDelayMs));
    this.timers.after(this.busyDelayMs, this.flushNow);
  }

  open(req: OpenRequest): Promise<OpenResult> {
    return this.commit(() => this.sync.open(req));
  }

  resume(reqs: ResumeRequest[]): Promise<ResumeOutcome[]> {
    return this.commit(() => this.sync.resume(reqs));
  }

  write(req: WriteRequest): Promise<WriteResult> {
    return this.commit(() => this.sync.write(req));
  }

  read(req: ReadRequest): Promise<ReadResult> {
    return this.commit(() => this.sync.read(req));
  }

  extents(req: ExtentsRequest): Promise<ExtentsResult> {
    return this.commit(() => this.sync.extents(req));
  }

  close(ref: HandleRef, session: string): Promise<boolean> {
    return this.commit(() => this.sync.close(ref, session));
  }

  renew(session: string, refs: HandleRef[], leaseMs: number): Promise<RenewResult> {
    return this.commit(() => this.sync.renew(session, refs, leaseMs));
  }

  editAccess(req: AccessRequest): Promise<AccessResult> {
    return this.commit(() => this.sync.editAccess(req));
  }

  async access(target: string): Promise<TargetAccess | undefined> {
    return this.tx((t) => rules.accessOf(rules.viewOf(t, target)));
  }

  async record(target: string): Promise<LockRecord | undefined> {
    return this.tx((t) => t.getRecord(target));
  }

  async tombstones(target: string): Promise<Tombstone[]> {
    return this.tx((t) => t.getTombstones(target));
  }

  async pages(target: string): Promise<number> {
    return this.tx((t) => t.pages(target));
  }
}

/** Run callbacks of a committed transaction in order; one that throws does not stop the others. */
function runEffects(effects: Array<() => void>): void {
  for (const cb of effects) {
    try {
      cb();
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}
