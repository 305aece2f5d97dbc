/**
 * The rules of the store, written once over a small synchronous transaction interface. Each
 * function runs inside one transaction of the adapter (a JS turn for memory, BEGIN IMMEDIATE for
 * SQLite), which is what makes each rule atomic.
 */
import {
  MAX_TARGET_BYTES,
  type HandleRef,
  type LockRecord,
  type OpenRequest,
  type OpenResult,
  type ReadRequest,
  type ReadResult,
  type RenewResult,
  type ResumeOutcome,
  type ResumeRequest,
  type WriteRequest,
  type WriteResult,
} from './types.js';

export interface Tx {
  getRecord(target: string): LockRecord | undefined;
  putRecord(rec: LockRecord): void;
  deleteRecord(target: string): void;
  version(target: string): number;
  size(target: string): number;
  readData(target: string, offset: number, length: number): Uint8Array;
  /** Write bytes at offset (extending with zeros), bump the version, return the new version. */
  writeData(target: string, offset: number, data: Uint8Array): number;
}

export function open(tx: Tx, req: OpenRequest, nowMs: number): OpenResult {
  const version = tx.version(req.target);
  if (req.mode === 'read') return { ok: true, version, lastSeq: 0, takeover: false };
  const rec = tx.getRecord(req.target);
  if (rec && rec.requestId === req.requestId) {
    if (rec.principal !== req.principal) return { ok: false, code: 'FORBIDDEN', message: 'requestId belongs to another principal' };
    // Same application from a new session or another node: grant it and fence the old session.
    tx.putRecord({ ...rec, session: req.session, expiresAt: req.expiresAt });
    return { ok: true, version, lastSeq: rec.lastSeq, takeover: true };
  }
  if (rec && nowMs < rec.expiresAt) {
    return { ok: false, code: 'LOCKED', message: `${req.target} is locked by another writer for ${rec.expiresAt - nowMs} ms more` };
  }
  // No record, or its lock expired: the old holder's resume will now be denied.
  tx.putRecord({ target: req.target, requestId: req.requestId, principal: req.principal, session: req.session, expiresAt: req.expiresAt, lastSeq: 0 });
  return { ok: true, version, lastSeq: 0, takeover: false };
}

export function resume(tx: Tx, req: ResumeRequest): ResumeOutcome {
  const version = tx.version(req.target);
  if (req.mode === 'read') {
    return req.version === version ? { granted: true, lastSeq: 0, version } : { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version };
  }
  const rec = tx.getRecord(req.target);
  if (!rec || rec.requestId !== req.requestId) return { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version };
  if (rec.principal !== req.principal) return { granted: false, reason: 'MODIFIED', code: 'FORBIDDEN', version };
  if (req.lineage && !req.lineage.includes(rec.session)) return { granted: false, reason: 'SUPERSEDED', code: 'SUPERSEDED', version };
  tx.putRecord({ ...rec, session: req.session, expiresAt: req.expiresAt });
  return { granted: true, lastSeq: rec.lastSeq, version };
}

export function write(tx: Tx, req: WriteRequest): WriteResult {
  const rec = tx.getRecord(req.target);
  if (!rec || rec.requestId !== req.requestId) return { ok: false, code: 'MODIFIED', message: 'this requestId no longer holds the target' };
  if (rec.session !== req.session) return { ok: false, code: 'SUPERSEDED', message: 'this session was fenced by a newer session of the same requestId' };
  if (req.seq <= rec.lastSeq) return { ok: true, applied: false, version: tx.version(req.target) };
  if (req.seq !== rec.lastSeq + 1) return { ok: false, code: 'SEQ_GAP', message: `expected seq ${rec.lastSeq + 1}, got ${req.seq}` };
  if (req.offset + req.data.length > MAX_TARGET_BYTES) {
    return { ok: false, code: 'INVALID_ARGUMENT', message: `write past the maximum target size of ${MAX_TARGET_BYTES} bytes` };
  }
  // An empty write only takes its sequence number (the SDK uses one in place of a write it gave up on).
  const version = req.data.length === 0 ? tx.version(req.target) : tx.writeData(req.target, req.offset, req.data);
  tx.putRecord({ ...rec, lastSeq: req.seq });
  return { ok: true, applied: true, version };
}

export function read(tx: Tx, req: ReadRequest): ReadResult {
  if (req.fence) {
    const rec = tx.getRecord(req.target);
    if (!rec || rec.requestId !== req.fence.requestId) return { ok: false, code: 'MODIFIED', message: 'this requestId no longer holds the target' };
    if (rec.session !== req.fence.session) return { ok: false, code: 'SUPERSEDED', message: 'this session was fenced' };
  }
  return { ok: true, data: tx.readData(req.target, req.offset, req.length), version: tx.version(req.target) };
}

export function close(tx: Tx, ref: HandleRef, session: string): boolean {
  const rec = tx.getRecord(ref.target);
  if (!rec || rec.requestId !== ref.requestId || rec.session !== session) return false;
  tx.deleteRecord(ref.target);
  return true;
}

export function renew(tx: Tx, session: string, refs: HandleRef[], expiresAt: number): RenewResult {
  const lost: RenewResult['lost'] = [];
  for (const ref of refs) {
    const rec = tx.getRecord(ref.target);
    if (rec && rec.requestId === ref.requestId && rec.session === session) {
      if (rec.expiresAt !== expiresAt) tx.putRecord({ ...rec, expiresAt });
    } else {
      lost.push({ ...ref, reason: rec && rec.requestId === ref.requestId ? 'SUPERSEDED' : 'MODIFIED' });
    }
  }
  return { lost };
}
