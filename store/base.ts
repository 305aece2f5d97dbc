/** A store whose rules run in synchronous transactions of the adapter (memory, SQLite). */
import * as rules from './rules.js';
import type {
  HandleRef,
  LockRecord,
  OpenRequest,
  OpenResult,
  ReadRequest,
  ReadResult,
  RenewResult,
  ResumeOutcome,
  ResumeRequest,
  Store,
  WriteRequest,
  WriteResult,
} from './types.js';
import { StoreUnavailableError } from './types.js';

/** The store contract, synchronous: each call is one committed transaction when it returns. */
export interface SyncStore {
  open(req: OpenRequest, nowMs: number): OpenResult;
  resume(reqs: ResumeRequest[]): ResumeOutcome[];
  write(req: WriteRequest): WriteResult;
  read(req: ReadRequest): ReadResult;
  close(ref: HandleRef, session: string): boolean;
  renew(session: string, refs: HandleRef[], expiresAt: number): RenewResult;
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

interface Queued {
  fn: () => unknown;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  /** When it was first tried or queued (performance.now()), for the busy wait's bound. */
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
  /** Operations not yet committed, in arrival order (they commit in this order). */
  private queue: Queued[] = [];
  /** A flush is due (next turn, or after a busy pause). */
  private scheduled = false;
  private busyDelayMs = 0;
  /** Transactions committed and the operations they carried (a group commit carries many). */
  readonly commits = { transactions: 0, operations: 0 };

  readonly sync: SyncStore = {
    open: (req, nowMs) => this.tx((t) => rules.open(t, req, nowMs)),
    resume: (reqs) => this.tx((t) => reqs.map((r) => rules.resume(t, r))),
    write: (req) => this.tx((t) => rules.write(t, req)),
    read: (req) => this.tx((t) => rules.read(t, req)),
    close: (ref, session) => this.tx((t) => rules.close(t, ref, session)),
    renew: (session, refs, expiresAt) => this.tx((t) => rules.renew(t, session, refs, expiresAt)),
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
      try {
        const v = this.tx(() => fn());
        this.commits.transactions++;
        this.commits.operations++;
        return Promise.resolve(v);
      } catch (err) {
        if (!(err instanceof StoreBusyError)) return Promise.reject(err);
      }
    }
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject, since: performance.now() });
      if (!this.scheduled) {
        this.scheduled = true;
        if (this.groupCommit) setImmediate(() => this.flush());
        else this.retryLater();
      }
    });
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
    try {
      this.tx(() => {
        for (const q of batch) {
          try {
            // A nested transaction is a savepoint: an operation that throws undoes only itself.
            results.push({ ok: true, value: this.tx(() => q.fn()) });
          } catch (error) {
            if (error instanceof StoreUnavailableError) throw error;
            results.push({ ok: false, error });
          }
        }
      });
    } catch (err) {
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
    this.busyDelayMs = 0;
    this.commits.transactions++;
    this.commits.operations += batch.length;
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
      try {
        const v = this.tx(() => q.fn());
        this.commits.transactions++;
        this.commits.operations++;
        this.queue.shift();
        q.resolve(v);
      } catch (err) {
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
    return err instanceof StoreBusyError ? new StoreUnavailableError(`${err.message} (still busy after ${this.busyWaitMs} ms)`) : err;
  }

  private waitedTooLong(q: Queued): boolean {
    return performance.now() - q.since >= this.busyWaitMs;
  }

  /** Try the queue again after a pause that grows while the store stays busy. */
  private retryLater(): void {
    this.scheduled = true;
    this.busyDelayMs = Math.min(BUSY_RETRY_MAX_MS, Math.max(1, 2 * this.busyDelayMs));
    setTimeout(() => this.flush(), this.busyDelayMs);
  }

  open(req: OpenRequest, nowMs: number): Promise<OpenResult> {
    return this.commit(() => this.sync.open(req, nowMs));
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

  close(ref: HandleRef, session: string): Promise<boolean> {
    return this.commit(() => this.sync.close(ref, session));
  }

  renew(session: string, refs: HandleRef[], expiresAt: number): Promise<RenewResult> {
    return this.commit(() => this.sync.renew(session, refs, expiresAt));
  }

  async record(target: string): Promise<LockRecord | undefined> {
    return this.tx((t) => t.getRecord(target));
  }
}
