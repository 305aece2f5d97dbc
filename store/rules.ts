/**
 * The rules of the store, decided once, purely: each rule looks at what an adapter read of one target
 * (its record, its tombstones, its version: a `TargetView`) and returns its outcome and the writes to
 * make (`Effect`s). Any adapter applies a decision atomically: memory and SQLite inside their own
 * transaction (the `Tx` wrappers below), an adapter over an optimistic engine by committing the
 * effects guarded by the revisions it read, and deciding again if they changed.
 */
import {
  type HandleRef,
  type LockRecord,
  MAX_DISK_BYTES,
  MAX_TARGET_BYTES,
  type OpenRequest,
  type OpenResult,
  type ExtentsRequest,
  type ExtentsResult,
  MAX_EXTENT_PAGES,
  type ReadRequest,
  type ReadResult,
  type RenewResult,
  type ResumeOutcome,
  type ResumeRequest,
  type AccessRequest,
  type AccessResult,
  type WriteRequest,
  type WriteResult,
  type TargetAccess,
  type Tombstone,
} from './types.js';
import { accessOf, decideAccess, mayOpen, NO_ACCESS, settled } from './rules-access.js';
import { none, type Decision, type Effect, type TargetView, type Tx } from './rules-view.js';
import { boundElsewhere, bury, denial, handOver, staleRequest, tombOf } from './rules-records.js';
import { extentsOf, pageSpan } from './rules-extents.js';
import { changedOf, MAX_CHANGED_PAGES } from './rules-changed.js';
import type { ChangedRanges } from '../errors.js';

export type { Decision, Effect, TargetView, Tx } from './rules-view.js';
export { accessOf, decideAccess, mayOpen, NO_ACCESS } from './rules-access.js';

/**
 * Why an open naming `size` cannot have it (undefined: it can). A size is fixed once, by the first
 * write open of a target never written; after that an open names the same size or none.
 */
function sizeRefused(v: TargetView, req: OpenRequest, maxSize: number): Extract<OpenResult, { ok: false }> | undefined {
  const size = req.size;
  if (size === undefined || (size !== 0 && size === v.fixedSize)) return undefined;
  const refuse = (message: string) => ({ ok: false as const, code: 'INVALID_ARGUMENT' as const, message });
  if (!Number.isSafeInteger(size) || size < 1 || size > maxSize)
    return refuse(`a target's size must be between 1 and ${maxSize} bytes on this store, not ${size}`);
  if (v.fixedSize !== 0) return refuse(`${req.target} was created with a size of ${v.fixedSize} bytes, not ${size}`);
  if (v.version !== 0)
    return refuse(`${req.target} already holds data and has no fixed size: a size is fixed when a target is created`);
  if (req.mode === 'read') return refuse(`${req.target} does not exist yet: a write open creates it with a size`);
  return undefined;
}

/** The effect that fixes the size an open asked for, when the target has none yet. */
const fixing = (v: TargetView, req: OpenRequest): Effect[] =>
  req.size !== undefined && v.fixedSize === 0 ? [{ kind: 'size', size: req.size }] : [];

export function decideOpen(
  v: TargetView,
  req: OpenRequest,
  nowMs: number,
  maxSize = MAX_DISK_BYTES,
): Decision<OpenResult> {
  // Access first: a principal without it learns nothing more of the target (its size, its holder).
  const access = accessOf(v);
  if (access && !mayOpen(access, req.principal, req.mode))
    return none({ ok: false, code: 'FORBIDDEN', message: NO_ACCESS });
  const version = v.version;
  const refused = sizeRefused(v, req, maxSize);
  if (refused) return none(refused);
  const size = req.size ?? v.fixedSize;
  // An open of a name nobody has creates the target: the opening principal owns it.
  const created: Effect[] = access ? [] : [{ kind: 'access', access: { owner: req.principal, grants: [] } }];
  if (req.mode === 'read')
    return settled(v, { out: { ok: true, version, lastSeq: 0, takeover: false, size }, effects: created });
  const rec = v.record;
  const instance = req.instance ?? '';
  if (rec && rec.requestId === req.requestId) {
    if (rec.principal !== req.principal)
      return none({ ok: false, code: 'FORBIDDEN', message: 'requestId belongs to another principal' });
    // A node opens a requestId afresh only once (an application that comes back to it resumes it), so
    // an open finding the record held is the same open sent again on a later session, or a late copy
    // of one from a session the node has left: only a newer request of the same instance moves it.
    const stale = staleRequest(rec, req.session, instance, req.epoch, false);
    if (stale) return none({ ok: false, code: 'SUPERSEDED', message: stale });
    // The same open from a new session: grant it and fence the old session.
    return settled(v, {
      out: { ok: true, version, lastSeq: rec.lastSeq, takeover: true, size },
      effects: [
        { kind: 'put', record: handOver(rec, req.session, nowMs + req.leaseMs, instance, req.epoch) },
        ...fixing(v, req),
      ],
    });
  }
  if (rec && (v.live ?? nowMs < rec.expiresAt)) {
    // Who holds it, and when it can lapse: never while the holder's session lives (it renews the lock).
    const lapse =
      v.live === undefined
        ? `if that session stops renewing it, it lapses in ${rec.expiresAt - nowMs} ms at most`
        : "it lapses when that session's lease does";
    // The holder is named to its own principal only: another learns that the target is locked, not
    // the requestId it could otherwise try to pose as, nor when the lock can lapse.
    if (rec.principal !== req.principal)
      return none({ ok: false, code: 'LOCKED', message: `${req.target} is locked by another writer; retry later` });
    return none({
      ok: false,
      code: 'LOCKED',
      message: `${req.target} is held by requestId ${rec.requestId} (principal ${rec.principal}) through session ${rec.session}, which renews the lock while it lives; ${lapse}`,
    });
  }
  // A requestId stays its principal's while a tombstone names it: nobody else creates it again.
  if (boundElsewhere(v, req.requestId, req.principal))
    return none({ ok: false, code: 'FORBIDDEN', message: 'requestId belongs to another principal' });
  // A node opens a requestId afresh only once: an open of one that held the target before (its
  // tombstone) is a late copy from a session the node left, after the handle closed or lost the target.
  if (tombOf(v, req.requestId, req.principal))
    return none({
      ok: false,
      code: 'SUPERSEDED',
      message:
        'this requestId held the target before and let it go; this open is a late copy from a session its node has left',
    });
  // No record, or its lock expired: the old holder's resume will now be denied; its tombstone says
  // which of its writes were applied.
  const effects: Effect[] = rec
    ? [bury(v, rec, { requestId: req.requestId, principal: req.principal, at: nowMs })]
    : [];
  effects.push(
    {
      kind: 'put',
      record: {
        target: req.target,
        requestId: req.requestId,
        principal: req.principal,
        session: req.session,
        expiresAt: nowMs + req.leaseMs,
        lastSeq: 0,
        instance,
        instanceSeq: 0,
        prevInstance: '',
        epoch: req.epoch ?? 0,
      },
    },
    ...fixing(v, req),
    ...created,
  );
  return settled(v, { out: { ok: true, version, lastSeq: 0, takeover: false, size }, effects });
}

export function decideResume(v: TargetView, req: ResumeRequest, nowMs: number): Decision<ResumeOutcome> {
  const d = decideResumeOnly(v, req, nowMs);
  const out = d.out;
  if (out.granted || out.code !== 'MODIFIED' || req.version === undefined || !v.changedPages) return d;
  // What changed since the version the handle last saw: the pages whose last write made a newer one.
  const pages = v.changedPages(req.version, MAX_CHANGED_PAGES);
  return { ...d, out: withChanged(out, changedOf(pages, v.size ?? v.fixedSize)) };
}

/** A denial carrying what changed (for an adapter that reads the changed pages once it decided). */
export function withChanged(out: ResumeOutcome, c: ChangedRanges): ResumeOutcome {
  if (out.granted) return out;
  return { ...out, changed: c.changed, ...(c.coarse ? { coarse: true as const } : {}) };
}

function decideResumeOnly(v: TargetView, req: ResumeRequest, nowMs: number): Decision<ResumeOutcome> {
  // A principal whose access was revoked (or never given) resumes nothing, and learns nothing of the
  // target (not even its version). Nobody has the target (a store that lost it): the rules below decide.
  const access = accessOf(v);
  if (access && !mayOpen(access, req.principal, req.mode))
    return none({ granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN', version: 0 });
  const version = v.version;
  if (req.mode === 'read') {
    return none(
      req.version === version
        ? { granted: true, lastSeq: 0, version, size: v.fixedSize }
        : { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version },
    );
  }
  const instance = req.instance ?? '';
  const rec = v.record;
  if (!rec || rec.requestId !== req.requestId) {
    // An instance taking over wrote nothing yet: the record being gone is all it needs to know.
    if (req.takeover) return none({ granted: false, reason: 'MODIFIED', code: 'MODIFIED', version });
    return none(denial(tombOf(v, req.requestId, req.principal), instance, version));
  }
  // Nobody modified the target: the requestId is another principal's (FORBIDDEN, not MODIFIED: L1).
  if (rec.principal !== req.principal) return none({ granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN', version });
  if (!req.takeover && rec.instance !== instance) return none(denial(rec, instance, version));
  if (staleRequest(rec, req.session, instance, req.epoch, req.takeover === true)) {
    // `heldEpoch` when the counter was the reason (the same instance): a node behind can count on.
    return none({
      granted: false,
      reason: 'SUPERSEDED',
      code: 'SUPERSEDED',
      version,
      stale: true,
      ...(rec.instance === instance ? { heldEpoch: rec.epoch ?? 0 } : {}),
    });
  }
  return settled(v, {
    out: { granted: true, lastSeq: rec.lastSeq, version, size: v.fixedSize },
    effects: [{ kind: 'put', record: handOver(rec, req.session, nowMs + req.leaseMs, instance, req.epoch) }],
  });
}

/**
 * What a session that lost the record had applied, if the newest tombstone of its requestId is its own.
 * Writes and renewals name no principal; the session stands for it: a session holds one handle per
 * target and requestId, and no other principal's handle of the requestId can follow it on the target
 * while the requestId's tombstone binds it.
 */
function lostSeq(v: TargetView, requestId: string, session: string): number | undefined {
  const tomb = v.tombstones().find((t) => t.requestId === requestId);
  return tomb && tomb.session === session ? tomb.lastSeq : undefined;
}

export function decideWrite(v: TargetView, req: WriteRequest): Decision<WriteResult> {
  const rec = v.record;
  if (!rec || rec.requestId !== req.requestId) {
    return none({
      ok: false,
      code: 'MODIFIED',
      message: 'this requestId no longer holds the target',
      lastSeq: lostSeq(v, req.requestId, req.session),
    });
  }
  if (rec.session !== req.session)
    return none({
      ok: false,
      code: 'SUPERSEDED',
      message: 'this session was fenced by a newer session of the same requestId',
    });
  if (req.seq <= rec.lastSeq) return none({ ok: true, applied: false, version: v.version });
  if (req.seq !== rec.lastSeq + 1)
    return none({ ok: false, code: 'SEQ_GAP', message: `expected seq ${rec.lastSeq + 1}, got ${req.seq}` });
  if (v.fixedSize !== 0 && req.offset + req.data.length > v.fixedSize) {
    return none({
      ok: false,
      code: 'INVALID_ARGUMENT',
      message: `write past the end of ${req.target} (${v.fixedSize} bytes)`,
    });
  }
  if (req.offset + req.data.length > MAX_TARGET_BYTES && v.fixedSize === 0) {
    return none({
      ok: false,
      code: 'INVALID_ARGUMENT',
      message: `write past the maximum size of a target without a fixed size, ${MAX_TARGET_BYTES} bytes (give it a size when it is created)`,
    });
  }
  // An empty write only takes its sequence number (the agent sends one in place of a write that was
  // refused or given up on, so that write is never applied later and the next seq follows).
  const put: Effect = { kind: 'put', record: { ...rec, lastSeq: req.seq } };
  if (req.data.length === 0)
    return settled(v, { out: { ok: true, applied: true, version: v.version }, effects: [put] });
  return settled(v, {
    out: { ok: true, applied: true, version: v.version + 1 },
    effects: [{ kind: 'data', offset: req.offset, data: req.data }, put],
  });
}

/** Whether a read may see the data: a write handle's read is fenced like its writes. The adapter reads the bytes. */
export function decideRead(
  v: TargetView,
  req: Pick<ReadRequest, 'fence'>,
): Extract<ReadResult, { ok: false }> | undefined {
  if (!req.fence) return undefined;
  const rec = v.record;
  if (!rec || rec.requestId !== req.fence.requestId)
    return { ok: false, code: 'MODIFIED', message: 'this requestId no longer holds the target' };
  if (rec.session !== req.fence.session) return { ok: false, code: 'SUPERSEDED', message: 'this session was fenced' };
  return undefined;
}

export function decideClose(v: TargetView, ref: HandleRef, session: string): Decision<boolean> {
  const rec = v.record;
  if (!rec || rec.requestId !== ref.requestId || rec.session !== session) return none(false);
  // Kept as a tombstone too: an older instance of the requestId that comes back learns it was
  // superseded (and what it had applied), not that another writer modified the target.
  return settled(v, { out: true, effects: [bury(v, rec), { kind: 'delete' }] });
}

/** One lock of a renewal: extended (no outcome) or lost, with why and what it had applied. */
export function decideRenew(
  v: TargetView,
  ref: HandleRef,
  session: string,
  expiresAt: number,
): Decision<RenewResult['lost'][number] | undefined> {
  const rec = v.record;
  if (rec && rec.requestId === ref.requestId && rec.session === session) {
    return rec.expiresAt === expiresAt
      ? none(undefined)
      : settled(v, { out: undefined, effects: [{ kind: 'put', record: { ...rec, expiresAt } }] });
  }
  if (rec && rec.requestId === ref.requestId) return none({ ...ref, reason: 'SUPERSEDED' });
  return none({ ...ref, reason: 'MODIFIED', lastSeq: lostSeq(v, ref.requestId, session) });
}

// ---- The same rules inside a synchronous transaction (memory, SQLite, the simulation's store) ----

/**
 * A view of one target read through `tx`, each part when a rule first asks for it (a write reads no
 * tombstones); `live`: whether its lock is live, when the engine judges it (see TargetView.live).
 */
export function viewOf(tx: Tx, target: string, live?: boolean): TargetView {
  return new LazyView(tx, target, live);
}

/**
 * A target's view read lazily, each part at most once: one object per decision (no closure per part),
 * as every store operation makes one.
 */
class LazyView implements TargetView {
  private rec: LockRecord | undefined | null = null;
  private ver: number | undefined;

  constructor(
    private readonly tx: Tx,
    private readonly target: string,
    readonly live: boolean | undefined,
  ) {}

  get record(): LockRecord | undefined {
    if (this.rec === null) this.rec = this.tx.getRecord(this.target);
    return this.rec;
  }

  get version(): number {
    return (this.ver ??= this.tx.version(this.target));
  }

  get fixedSize(): number {
    return this.tx.fixedSize(this.target);
  }

  tombstones(): Tombstone[] {
    return this.tx.getTombstones(this.target);
  }

  get access(): TargetAccess | undefined {
    return this.tx.getAccess(this.target);
  }

  changedPages(since: number, max: number): number[] | undefined {
    return this.tx.changedPages(this.target, since, max);
  }

  get size(): number {
    return this.tx.size(this.target);
  }
}

/** Apply a decision's effects to `target` inside the running transaction. */
export function apply<T>(tx: Tx, target: string, d: Decision<T>): T {
  for (const e of d.effects) {
    if (e.kind === 'put') tx.putRecord(e.record);
    else if (e.kind === 'delete') tx.deleteRecord(target);
    else if (e.kind === 'tombstones') tx.putTombstones(target, e.tombstones);
    else if (e.kind === 'size') tx.fixSize(target, e.size);
    else if (e.kind === 'access') tx.putAccess(target, e.access);
    else tx.writeData(target, e.offset, e.data);
  }
  return d.out;
}

export function open(tx: Tx, req: OpenRequest, nowMs: number): OpenResult {
  return apply(tx, req.target, decideOpen(viewOf(tx, req.target), req, nowMs, tx.maxSize));
}

export function resume(tx: Tx, req: ResumeRequest, nowMs: number): ResumeOutcome {
  return apply(tx, req.target, decideResume(viewOf(tx, req.target), req, nowMs));
}

export function write(tx: Tx, req: WriteRequest): WriteResult {
  return apply(tx, req.target, decideWrite(viewOf(tx, req.target), req));
}

export function read(tx: Tx, req: ReadRequest): ReadResult {
  const refused = decideRead(viewOf(tx, req.target), req);
  return (
    refused ?? { ok: true, data: tx.readData(req.target, req.offset, req.length), version: tx.version(req.target) }
  );
}

/** Which pages of the range the target keeps: fenced as a read is (decideRead); the adapter lists the pages. */
export function extents(tx: Tx, req: ExtentsRequest): ExtentsResult {
  const refused = decideRead(viewOf(tx, req.target), req);
  if (refused) return refused;
  const version = tx.version(req.target);
  if (req.length === 0) return extentsOf(req, [], MAX_EXTENT_PAGES, version);
  const { first, last } = pageSpan(req.offset, req.length);
  return extentsOf(req, tx.keptPages(req.target, first, last, MAX_EXTENT_PAGES), MAX_EXTENT_PAGES, version);
}

export function editAccess(tx: Tx, req: AccessRequest): AccessResult {
  return apply(tx, req.target, decideAccess(viewOf(tx, req.target), req));
}

export function close(tx: Tx, ref: HandleRef, session: string): boolean {
  return apply(tx, ref.target, decideClose(viewOf(tx, ref.target), ref, session));
}

export function renew(tx: Tx, session: string, refs: HandleRef[], leaseMs: number, nowMs: number): RenewResult {
  const expiresAt = nowMs + leaseMs;
  const lost: RenewResult['lost'] = [];
  for (const ref of refs) {
    const l = apply(tx, ref.target, decideRenew(viewOf(tx, ref.target), ref, session, expiresAt));
    if (l) lost.push(l);
  }
  return { lost };
}
