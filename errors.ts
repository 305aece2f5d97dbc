/**
 * Every error safe-resume reports carries one of these codes. The same list is documented in
 * docs/errors.md; keep the two in step.
 */
export const ERROR_CODES = {
  LOCKED: 'another writer holds a live lock on the target; wait and retry',
  MODIFIED: 'the target may have been modified by another writer while this handle was away',
  SUPERSEDED: 'the same requestId was opened by another session; this one is fenced',
  TIMEOUT: 'the handle stayed paused longer than its pause timeout',
  CLOSED_BY_STORAGE: 'the storage closed the handle (its record is gone)',
  UNAVAILABLE: 'storage is unreachable or dismounted right now (retryable)',
  AUTH_FAILED:
    "a peer could not prove its credential (a node's, a principal's, or a replica's proof that it holds the cluster key)",
  FORBIDDEN:
    "the request's principal may not open the target (it neither owns it nor was granted access) or may not change who may, the requestId belongs to another principal, or the request names a principal this node has not proven (it holds no credential for it)",
  BAD_FRAME: 'a frame could not be decoded or failed schema validation',
  UNKNOWN_TYPE: 'a frame named a message type this peer does not know',
  FRAME_TOO_LARGE: 'a frame exceeded the maximum frame size',
  NOT_OPEN: 'no open handle matches the request on this session',
  INVALID_ARGUMENT: 'an argument was out of range or of the wrong type',
  SEQ_GAP: 'a write arrived before an earlier sequence number of the same handle (retryable)',
  CLOSED: 'the handle or the application was closed',
  QUEUE_FULL:
    'a paused handle already holds as many queued operations (4096) or bytes (64 MiB) as it may; retry once it is active',
  OUTCOME_UNKNOWN:
    'the write was sent but the handle was lost before its answer, and the store no longer knows whether it was applied (see `reason`)',
  INTERNAL: 'an unexpected failure inside a peer; it kept running',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Reasons a handle can be invalidated (SPEC "Handle lifecycle"). */
export type InvalidationReason = 'MODIFIED' | 'SUPERSEDED' | 'TIMEOUT' | 'CLOSED_BY_STORAGE' | 'FORBIDDEN';

/** A byte range of a target: `[offset, length]`. */
export type ByteRange = [offset: number, length: number];

/** Ranges a MODIFIED denial lists at most (more are merged into coarser ones). */
export const MAX_CHANGED_RANGES = 64;

/**
 * What a resume denied MODIFIED says another writer changed: the byte ranges of the target written
 * (or zeroed) since the version the handle last saw, whole pages of 4096 bytes, in order, disjoint,
 * at most MAX_CHANGED_RANGES. `coarse`: more ranges changed than that, so adjacent ones were merged
 * into coarser ones, which cover every changed byte and some that did not change.
 */
export interface ChangedRanges {
  changed: ByteRange[];
  coarse: boolean;
}

/** `0-4095, 1048576-1052671 (2 ranges)`: the ranges as inclusive byte spans, for a person to read. */
export function describeChanged(c: ChangedRanges): string {
  const spans = c.changed.map(([o, l]) => `${o}-${o + l - 1}`).join(', ');
  const n = c.changed.length;
  return `${spans || 'nothing'} (${n} range${n === 1 ? '' : 's'}${c.coarse ? ', coarsened' : ''})`;
}

export const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['LOCKED', 'UNAVAILABLE', 'SEQ_GAP', 'QUEUE_FULL']);

export class SafeResumeError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  /** For OUTCOME_UNKNOWN: why the handle was lost (MODIFIED, SUPERSEDED, TIMEOUT, UNAVAILABLE, CLOSED, ...). */
  readonly reason: ErrorCode | undefined;
  /** For an open that reclaimed a requestId the node kept (or named) and was refused: that requestId. */
  requestId?: string | undefined;
  /**
   * For MODIFIED on a resume denied: the byte ranges another writer changed since the version the
   * handle last saw (see ChangedRanges), and whether they were coarsened. Undefined when not known.
   */
  changed?: ByteRange[] | undefined;
  coarse?: boolean | undefined;
  constructor(code: ErrorCode, message?: string, reason?: ErrorCode) {
    super(message ?? ERROR_CODES[code]);
    this.name = 'SafeResumeError';
    this.code = code;
    this.retryable = RETRYABLE.has(code);
    this.reason = reason;
  }
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_CODES, value);
}
