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

interface Queued {
  fn: () => unknown;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

export abstract class TxStore implements Store {
  abstract readonly kind: string;
  /** Run `fn` as one atomic transaction; throw StoreUnavailableError when storage cannot be reached. */
  protected abstract tx<T>(fn: (tx: rules.Tx) => T): T;
  abstract ping(): Promise<void>;
  abstract shutdown(): Promise<void>;
  /**
   * Group commit: operations that arrive in the same turn of the event loop run in one transaction,
   * each in its own savepoint, and are answered after it commits. Off, each is its own transaction.
   */
  protected groupCommit = false;
  private queue: Queued[] = [];
  private flushing = false;
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
   * next group; otherwise now, on its own.
   */
  commit<T>(fn: () => T): Promise<T> {
    if (!this.groupCommit) {
      try {
        const v = this.tx(() => fn());
        this.commits.transactions++;
        this.commits.operations++;
        return Promise.resolve(v);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      if (!this.flushing) {
        this.flushing = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushing = false;
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
      for (const q of batch) q.reject(err);
      return;
    }
    this.commits.transactions++;
    this.commits.operations += batch.length;
    batch.forEach((q, i) => {
      const r = results[i]!;
      if (r.ok) q.resolve(r.value);
      else q.reject(r.error);
    });
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
