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
  TOMBSTONES_PER_TARGET,
  type Tombstone,
  type ResumeOutcome,
  type ResumeRequest,
  type WriteRequest,
  type WriteResult,
} from './types.js';

export interface Tx {
  getRecord(target: string): LockRecord | undefined;
  putRecord(rec: LockRecord): void;
  deleteRecord(target: string): void;
  /** The target's tombstones, newest first (at most TOMBSTONES_PER_TARGET). */
  getTombstones(target: string): Tombstone[];
  putTombstones(target: string, tombs: Tombstone[]): void;
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
  const instance = req.instance ?? '';
  if (rec && rec.requestId === req.requestId) {
    if (rec.principal !== req.principal) return { ok: false, code: 'FORBIDDEN', message: 'requestId belongs to another principal' };
    // Same application from a new session or another node: grant it and fence the old session.
    tx.putRecord(handOver(rec, req.session, nowMs + req.leaseMs, instance));
    return { ok: true, version, lastSeq: rec.lastSeq, takeover: true };
  }
  if (rec && nowMs < rec.expiresAt) {
    return { ok: false, code: 'LOCKED', message: `${req.target} is locked by another writer for ${rec.expiresAt - nowMs} ms more` };
  }
  // No record, or its lock expired: the old holder's resume will now be denied; its tombstone says
  // which of its writes were applied.
  if (rec) bury(tx, rec);
  tx.putRecord({ target: req.target, requestId: req.requestId, principal: req.principal, session: req.session, expiresAt: nowMs + req.leaseMs, lastSeq: 0, instance, instanceSeq: 0, prevInstance: '' });
  return { ok: true, version, lastSeq: 0, takeover: false };
}

/** The record on a new session, and on a new instance if `instance` differs (a takeover). */
function handOver(rec: LockRecord, session: string, expiresAt: number, instance: string): LockRecord {
  if (instance === rec.instance) return { ...rec, session, expiresAt };
  return { ...rec, session, expiresAt, instance, instanceSeq: rec.lastSeq, prevInstance: rec.instance };
}

function bury(tx: Tx, rec: LockRecord): void {
  const tomb: Tombstone = { requestId: rec.requestId, instance: rec.instance, instanceSeq: rec.instanceSeq, prevInstance: rec.prevInstance, session: rec.session, lastSeq: rec.lastSeq };
  const kept = tx.getTombstones(rec.target).filter((t) => t.requestId !== rec.requestId);
  tx.putTombstones(rec.target, [tomb, ...kept].slice(0, TOMBSTONES_PER_TARGET));
}

/**
 * Why `instance` of `requestId` cannot resume, and what it had applied, judged from a record or
 * tombstone of the same requestId (or none). Another instance holding it means SUPERSEDED; the
 * instance it superseded ended at `instanceSeq`; an older one's writes are unknown.
 */
function denial(held: LockRecord | Tombstone | undefined, instance: string, version: number): Extract<ResumeOutcome, { granted: false }> {
  if (!held) return { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version };
  if (held.instance === instance) return { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version, lastSeq: held.lastSeq };
  const out: Extract<ResumeOutcome, { granted: false }> = { granted: false, reason: 'SUPERSEDED', code: 'SUPERSEDED', version };
  if (held.prevInstance === instance && instance !== '') out.lastSeq = held.instanceSeq;
  return out;
}

export function resume(tx: Tx, req: ResumeRequest, nowMs: number): ResumeOutcome {
  const version = tx.version(req.target);
  if (req.mode === 'read') {
    return req.version === version ? { granted: true, lastSeq: 0, version } : { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version };
  }
  const instance = req.instance ?? '';
  const rec = tx.getRecord(req.target);
  if (!rec || rec.requestId !== req.requestId) {
    // An instance taking over wrote nothing yet: the record being gone is all it needs to know.
    if (req.takeover) return { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version };
    const tomb = tx.getTombstones(req.target).find((t) => t.requestId === req.requestId);
    return denial(tomb, instance, version);
  }
  if (rec.principal !== req.principal) return { granted: false, reason: 'MODIFIED', code: 'FORBIDDEN', version };
  if (!req.takeover && rec.instance !== instance) return denial(rec, instance, version);
  tx.putRecord(handOver(rec, req.session, nowMs + req.leaseMs, instance));
  return { granted: true, lastSeq: rec.lastSeq, version };
}

/** What a session that lost the record had applied, if the newest tombstone of its requestId is its own. */
function lostSeq(tx: Tx, target: string, requestId: string, session: string): number | undefined {
  const tomb = tx.getTombstones(target).find((t) => t.requestId === requestId);
  return tomb && tomb.session === session ? tomb.lastSeq : undefined;
}

export function write(tx: Tx, req: WriteRequest): WriteResult {
  const rec = tx.getRecord(req.target);
  if (!rec || rec.requestId !== req.requestId) {
    return { ok: false, code: 'MODIFIED', message: 'this requestId no longer holds the target', lastSeq: lostSeq(tx, req.target, req.requestId, req.session) };
  }
  if (rec.session !== req.session) return { ok: false, code: 'SUPERSEDED', message: 'this session was fenced by a newer session of the same requestId' };
  if (req.seq <= rec.lastSeq) return { ok: true, applied: false, version: tx.version(req.target) };
  if (req.seq !== rec.lastSeq + 1) return { ok: false, code: 'SEQ_GAP', message: `expected seq ${rec.lastSeq + 1}, got ${req.seq}` };
  if (req.offset + req.data.length > MAX_TARGET_BYTES) {
    return { ok: false, code: 'INVALID_ARGUMENT', message: `write past the maximum target size of ${MAX_TARGET_BYTES} bytes` };
  }
  // An empty write only takes its sequence number (the agent sends one in place of a write that was
  // refused or given up on, so that write is never applied later and the next seq follows).
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
  // Kept as a tombstone too: an older instance of the requestId that comes back learns it was
  // superseded (and what it had applied), not that another writer modified the target.
  bury(tx, rec);
  tx.deleteRecord(ref.target);
  return true;
}

export function renew(tx: Tx, session: string, refs: HandleRef[], leaseMs: number, nowMs: number): RenewResult {
  const expiresAt = nowMs + leaseMs;
  const lost: RenewResult['lost'] = [];
  for (const ref of refs) {
    const rec = tx.getRecord(ref.target);
    if (rec && rec.requestId === ref.requestId && rec.session === session) {
      if (rec.expiresAt !== expiresAt) tx.putRecord({ ...rec, expiresAt });
    } else {
      if (rec && rec.requestId === ref.requestId) lost.push({ ...ref, reason: 'SUPERSEDED' });
      else lost.push({ ...ref, reason: 'MODIFIED', lastSeq: lostSeq(tx, ref.target, ref.requestId, session) });
    }
  }
  return { lost };
}
