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

export abstract class TxStore implements Store {
  abstract readonly kind: string;
  /** Run `fn` as one atomic transaction; throw StoreUnavailableError when storage cannot be reached. */
  protected abstract tx<T>(fn: (tx: rules.Tx) => T): T;
  abstract ping(): Promise<void>;
  abstract shutdown(): Promise<void>;

  async open(req: OpenRequest, nowMs: number): Promise<OpenResult> {
    return this.tx((t) => rules.open(t, req, nowMs));
  }

  async resume(reqs: ResumeRequest[]): Promise<ResumeOutcome[]> {
    return this.tx((t) => reqs.map((r) => rules.resume(t, r)));
  }

  async write(req: WriteRequest): Promise<WriteResult> {
    return this.tx((t) => rules.write(t, req));
  }

  async read(req: ReadRequest): Promise<ReadResult> {
    return this.tx((t) => rules.read(t, req));
  }

  async close(ref: HandleRef, session: string): Promise<void> {
    this.tx((t) => rules.close(t, ref, session));
  }

  async renew(session: string, refs: HandleRef[], expiresAt: number): Promise<RenewResult> {
    return this.tx((t) => rules.renew(t, session, refs, expiresAt));
  }

  async record(target: string): Promise<LockRecord | undefined> {
    return this.tx((t) => t.getRecord(target));
  }
}
