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

/** The store contract, synchronous: each call is one committed transaction when it returns. */
export interface SyncStore {
  open(req: OpenRequest, nowMs: number): OpenResult;
  resume(reqs: ResumeRequest[]): ResumeOutcome[];
  write(req: WriteRequest): WriteResult;
  read(req: ReadRequest): ReadResult;
  close(ref: HandleRef, session: string): boolean;
  renew(session: string, refs: HandleRef[], expiresAt: number): RenewResult;
}

export abstract class TxStore implements Store {
  abstract readonly kind: string;
  /** Run `fn` as one atomic transaction; throw StoreUnavailableError when storage cannot be reached. */
  protected abstract tx<T>(fn: (tx: rules.Tx) => T): T;
  abstract ping(): Promise<void>;
  abstract shutdown(): Promise<void>;

  readonly sync: SyncStore = {
    open: (req, nowMs) => this.tx((t) => rules.open(t, req, nowMs)),
    resume: (reqs) => this.tx((t) => reqs.map((r) => rules.resume(t, r))),
    write: (req) => this.tx((t) => rules.write(t, req)),
    read: (req) => this.tx((t) => rules.read(t, req)),
    close: (ref, session) => this.tx((t) => rules.close(t, ref, session)),
    renew: (session, refs, expiresAt) => this.tx((t) => rules.renew(t, session, refs, expiresAt)),
  };

  async open(req: OpenRequest, nowMs: number): Promise<OpenResult> {
    return this.sync.open(req, nowMs);
  }

  async resume(reqs: ResumeRequest[]): Promise<ResumeOutcome[]> {
    return this.sync.resume(reqs);
  }

  async write(req: WriteRequest): Promise<WriteResult> {
    return this.sync.write(req);
  }

  async read(req: ReadRequest): Promise<ReadResult> {
    return this.sync.read(req);
  }

  async close(ref: HandleRef, session: string): Promise<boolean> {
    return this.sync.close(ref, session);
  }

  async renew(session: string, refs: HandleRef[], expiresAt: number): Promise<RenewResult> {
    return this.sync.renew(session, refs, expiresAt);
  }

  /** Run `fn` (which may call `sync` rules) as one transaction, e.g. to record what a rule decided with it. */
  atomically<T>(fn: () => T): T {
    return this.tx(() => fn());
  }

  async record(target: string): Promise<LockRecord | undefined> {
    return this.tx((t) => t.getRecord(target));
  }
}
