/**
 * The store contract: SPEC "Rules of the store". Each method is one atomic step. A lock's life is a
 * duration (`leaseMs`) that the store measures on its own clock (the database host's, or etcd's), never
 * a time read from a replica's clock: replicas on hosts whose clocks disagree, or are stepped, cannot
 * shorten a hold. The rules take the store's time as an argument, so a simulated clock can drive them.
 */
import type { ByteRange, InvalidationReason } from '../errors.js';

export type Mode = 'read' | 'write';

/** The resume record of a target's writer: who holds it, through which session, until when. */
export interface LockRecord {
  target: string;
  requestId: string;
  principal: string;
  session: string;
  /** On the store's clock: the lock is live while `now < expiresAt`; the record outlives the lock until another writer opens. */
  expiresAt: number;
  /** Highest write sequence number applied for this requestId. */
  lastSeq: number;
  /** The handle instance holding the record (a fresh id per open or takeover; '' if none was given). */
  instance: string;
  /** `lastSeq` when this instance took the record: what the instance before it had applied. */
  instanceSeq: number;
  /** The instance this one took the record from, if it took over ('' if none). */
  prevInstance: string;
  /**
   * The instances the record was taken over from, newest first (at most RETIRED_INSTANCES): a late
   * takeover by one of them, from a session its node left, takes nothing. Absent in older records.
   */
  retired?: string[] | undefined;
  /**
   * The hand-over counter of the request that last moved the record to a session (0: none given). A
   * node numbers every open and resume it sends for a handle instance with a larger one than before,
   * across its restarts, and the store never lets the record go back to a smaller one: a request from
   * a session the node has left (a stalled replica or store that answers late) cannot take the record
   * from the session the node uses now. Records written before it have none (read as 0).
   */
  epoch?: number | undefined;
}

/**
 * What the store keeps of a requestId whose record another writer took after its hold period, so a
 * later resume can still say which of its writes were applied (S5). At most TOMBSTONES_PER_TARGET per
 * target, newest first; an older one is forgotten and its writes' outcome becomes unknown.
 */
export interface Tombstone {
  requestId: string;
  /**
   * The principal the requestId is bound to: while the tombstone is kept, no other principal opens
   * it, and only this principal's resume takes it as evidence. Absent in tombstones written before it
   * was kept: such a one binds its requestId to no principal that can open it afresh, and is taken as
   * evidence by whichever principal resumes it (as it was).
   */
  principal?: string | undefined;
  instance: string;
  instanceSeq: number;
  prevInstance: string;
  /** The session that held the record last. */
  session: string;
  lastSeq: number;
  /**
   * Who took the target once this requestId's lock had lapsed, and when (the store's clock). Absent
   * when the requestId closed its handle itself, and in tombstones written before it was kept.
   */
  takenBy?: { requestId: string; principal: string; at: number } | undefined;
}

/** One principal's access to a target another principal owns: `read`, or `write` (which reads too). */
export interface Grant {
  principal: string;
  mode: Mode;
}

/**
 * Who may open a target (SPEC "Owner", "Tenants are isolated"): the principal whose open created it,
 * and the principals it (or the operator) granted access. Kept with the target for as long as the
 * target is, whoever holds its lock; one list per target, at most MAX_GRANTS entries.
 */
export interface TargetAccess {
  owner: string;
  grants: Grant[];
}

/** Entries one target's access list may hold. */
export const MAX_GRANTS = 64;

/**
 * The owner of a target written by an earlier version (which kept no owners), when it has no lock
 * record and no tombstone naming a principal to take it from (see rules.accessOf).
 */
export const LEGACY_OWNER = 'default';

/**
 * A change to a target's access list: `mode` grants `principal` that access (replacing what it had),
 * `none` revokes it. `by`: the principal asking, which must own the target; undefined: the operator.
 */
export interface AccessRequest {
  target: string;
  by: string | undefined;
  principal: string;
  mode: Mode | 'none';
}

export type AccessResult =
  | { ok: true; access: TargetAccess }
  /** FORBIDDEN: the asker does not own the target (or it does not exist: the same answer). */
  | { ok: false; code: 'FORBIDDEN' | 'INVALID_ARGUMENT'; message: string };

export const TOMBSTONES_PER_TARGET = 8;

/** Instances a record remembers it was taken over from (LockRecord.retired). */
export const RETIRED_INSTANCES = 8;

export interface OpenRequest {
  target: string;
  requestId: string;
  principal: string;
  mode: Mode;
  session: string;
  /** How long the lock lasts when a write open is granted, from the store's now. */
  leaseMs: number;
  /** The handle instance opening (write handles). */
  instance?: string | undefined;
  /**
   * The target's size in bytes, fixed when it is created (a disk). A write open of a target never
   * written fixes it; any open of a target whose size is fixed otherwise must name that size or none.
   */
  size?: number | undefined;
  /** Write handles: the hand-over counter of this request (see LockRecord.epoch); absent, it is not checked. */
  epoch?: number | undefined;
}

export type OpenResult =
  /** `size`: the target's fixed size, 0 if it has none (it grows as it is written, up to MAX_TARGET_BYTES). */
  | { ok: true; version: number; lastSeq: number; takeover: boolean; size: number }
  /** SUPERSEDED: a newer request of the same handle instance holds the record (this one comes from a session its node left). */
  | { ok: false; code: 'LOCKED' | 'FORBIDDEN' | 'INVALID_ARGUMENT' | 'SUPERSEDED'; message: string };

export interface ResumeRequest {
  target: string;
  requestId: string;
  principal: string;
  mode: Mode;
  session: string;
  /** How long the lock lasts when a write resume is granted, from the store's now. */
  leaseMs: number;
  /**
   * The target version the handle last saw. A read handle is granted only at it; a resume denied
   * MODIFIED lists what changed since it (`changed`). Absent: a writer's denial lists nothing.
   */
  version?: number | undefined;
  /** Write handles: the handle instance resuming. */
  instance?: string | undefined;
  /** Take the record over from another instance of the same requestId (an application that moved). */
  takeover?: boolean | undefined;
  /** Write handles: the hand-over counter of this request (see LockRecord.epoch); absent, it is not checked. */
  epoch?: number | undefined;
}

export type ResumeOutcome =
  /** `size`: the target's fixed size, 0 if it has none. */
  | { granted: true; lastSeq: number; version: number; size: number }
  /**
   * `lastSeq`: what this instance had applied, when the store still knows (record or tombstone).
   * `stale`: a newer request of this same instance holds the record through another session (its
   * hand-over counter, `heldEpoch`, is at least this request's), so this one comes from a session its
   * node has left, and the record is left as it is. A node that gets this answer on the session it
   * uses lost count of its hand-overs (its count of starts could not be kept): it counts on from
   * `heldEpoch` and resumes again. `changed` (MODIFIED, when the request named the version it last
   * saw): the byte ranges written or zeroed since that version (errors.ts ChangedRanges), `coarse`
   * when they were merged to fit MAX_CHANGED_RANGES; absent where the store cannot tell.
   */
  | {
      granted: false;
      reason: InvalidationReason;
      code: 'MODIFIED' | 'FORBIDDEN' | 'SUPERSEDED';
      version: number;
      lastSeq?: number | undefined;
      stale?: true | undefined;
      heldEpoch?: number | undefined;
      changed?: ByteRange[] | undefined;
      coarse?: true | undefined;
    };

export interface WriteRequest {
  target: string;
  requestId: string;
  session: string;
  seq: number;
  offset: number;
  data: Uint8Array;
}

export type WriteResult =
  | { ok: true; applied: boolean; version: number }
  /** `lastSeq` on MODIFIED: what this session had applied before losing the record, if the store knows. */
  | {
      ok: false;
      code: 'MODIFIED' | 'SUPERSEDED' | 'SEQ_GAP' | 'INVALID_ARGUMENT';
      message: string;
      lastSeq?: number | undefined;
    };

export interface ReadRequest {
  target: string;
  offset: number;
  length: number;
  /** A write handle's read is fenced like its writes; a read handle passes none. */
  fence?: { requestId: string; session: string } | undefined;
}

export type ReadResult =
  { ok: true; data: Uint8Array; version: number } | { ok: false; code: 'MODIFIED' | 'SUPERSEDED'; message: string };

/**
 * Which pages of `[offset, offset + length)` of a target the store keeps (the allocation an NBD
 * export's BLOCK_STATUS reports). Fenced like a read: a write handle's asks with its requestId and session.
 */
export interface ExtentsRequest {
  target: string;
  offset: number;
  length: number;
  fence?: { requestId: string; session: string } | undefined;
}

export type ExtentsResult =
  /**
   * `kept`: the kept parts of `[offset, end)`, as `[offset, length]` in order, disjoint, not touching,
   * clipped to that range (a page the store keeps holds data; one it does not reads as zeros). `end`:
   * how far the answer describes, `offset < end <= offset + length` (for a length above 0): the
   * store lists at most MAX_EXTENT_PAGES kept pages per answer, so a range holding more is described
   * in part, up to the end of the last page listed; the caller asks again from `end`.
   */
  | { ok: true; kept: Array<[number, number]>; end: number; version: number }
  | { ok: false; code: 'MODIFIED' | 'SUPERSEDED'; message: string };

/** Kept pages one `extents` answer lists at most (16 MiB of kept data, and the one list of page numbers it reads). */
export const MAX_EXTENT_PAGES = 4096;

export interface HandleRef {
  target: string;
  requestId: string;
}

export interface RenewResult {
  /** Handles whose record no longer names this session, why, and what they had applied if known. */
  lost: Array<HandleRef & { reason: InvalidationReason; lastSeq?: number | undefined }>;
}

export interface Store {
  readonly kind: string;
  open(req: OpenRequest): Promise<OpenResult>;
  /** A batch of resumes; each is decided atomically on its own. */
  resume(reqs: ResumeRequest[]): Promise<ResumeOutcome[]>;
  write(req: WriteRequest): Promise<WriteResult>;
  read(req: ReadRequest): Promise<ReadResult>;
  /** Which pages of a range the target keeps (at most MAX_EXTENT_PAGES of them), fenced like a read. */
  extents(req: ExtentsRequest): Promise<ExtentsResult>;
  /** Release the lock and delete the record, if this session holds it; true if it did. */
  close(ref: HandleRef, session: string): Promise<boolean>;
  /** Set the expiry of every listed lock that this session still holds, in one batch. */
  /** Every lock of `refs` still held through `session` lasts `leaseMs` more, from the store's now. */
  renew(session: string, refs: HandleRef[], leaseMs: number): Promise<RenewResult>;
  /** For inspection and tests: the target's record, if any. */
  record(target: string): Promise<LockRecord | undefined>;
  /** Grant or revoke one principal's access to a target: its owner, or the operator (`by` undefined). */
  editAccess(req: AccessRequest): Promise<AccessResult>;
  /** For inspection: who may open the target (rules.accessOf); undefined if nobody has it. */
  access(target: string): Promise<TargetAccess | undefined>;
  /** For inspection: what the store keeps of the target's earlier holders, newest first. */
  tombstones(target: string): Promise<Tombstone[]>;
  /**
   * For inspection and tests: how many pages of PAGE_BYTES hold the target's data. A page that is
   * all zeros is kept by none (a write that leaves a page all zeros removes it): it reads as zeros.
   */
  pages(target: string): Promise<number>;
  /** Told how long each committed store transaction took (metrics); adapters that can time them do. */
  onTransaction?: ((ms: number) => void) | undefined;
  /** Cheap liveness probe; throws StoreUnavailableError while the store cannot be used. */
  ping(): Promise<void>;
  shutdown(): Promise<void>;
}

/** A decided rule, as a store's decision log sees it (one renewal item per handle). */
export type Decided =
  | { op: 'open'; req: OpenRequest; out: OpenResult }
  | { op: 'resume'; req: ResumeRequest; out: ResumeOutcome }
  | { op: 'write'; req: WriteRequest; out: WriteResult }
  | { op: 'read'; req: ReadRequest; out: ReadResult }
  | { op: 'close'; ref: HandleRef; session: string; out: boolean }
  | { op: 'renew'; session: string; refs: HandleRef[]; out: RenewResult }
  | { op: 'access'; req: AccessRequest; out: AccessResult };

/**
 * What a store keeps of each decision, committed atomically with it so the log's order is the store's
 * order (the chaos checker's history). Returns the lines to keep (none for most decisions of most stores).
 */
export type DecisionLog = (d: Decided) => string[];

/**
 * Thrown by an adapter when its backing storage cannot be reached (the replica then dismounts).
 * `maybeApplied`: the operation's commit was sent and its answer never came (an etcd transaction
 * timed out), so it may have landed, or may still land later; without it the operation was not
 * applied and never will be (it failed before any attempt to commit, or its transaction was rolled
 * back). A write refused with `maybeApplied` is no proof that the write did not land.
 */
export class StoreUnavailableError extends Error {
  readonly maybeApplied: boolean;
  constructor(message: string, opts: { maybeApplied?: boolean } = {}) {
    super(message);
    this.name = 'StoreUnavailableError';
    this.maybeApplied = opts.maybeApplied ?? false;
  }
}

/**
 * Targets are kept in pages of this many bytes (SQLite, etcd): a write rewrites only the pages it
 * touches, a page never written or left all zeros is not stored.
 */
export const PAGE_BYTES = 4096;

const ZERO_PAGE = new Uint8Array(PAGE_BYTES);

/** Whether `bytes` (at most PAGE_BYTES of them: a page) are all zero. */
export function isZeroPage(bytes: Uint8Array): boolean {
  if (bytes.length > PAGE_BYTES) throw new RangeError(`a page is at most ${PAGE_BYTES} bytes`);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).equals(ZERO_PAGE.subarray(0, bytes.length));
}

/** Largest a target without a fixed size grows, so one write cannot exhaust memory. */
export const MAX_TARGET_BYTES = 64 * 1024 * 1024;

/**
 * Largest size a target (a disk) may be given at creation on a store that keeps pages sparse
 * (SQLite, etcd): 1 TiB. Pages never written take no space. The memory store, which keeps a target
 * in one buffer, allows MAX_TARGET_BYTES.
 */
export const MAX_DISK_BYTES = 2 ** 40;
