/**
 * What a store rule decides on and what it decides: the view of one target an adapter read
 * (`TargetView`), or the synchronous transaction it reads it in (`Tx`), and the outcome with the
 * writes to make (`Decision`, `Effect`s).
 */
import type { LockRecord, TargetAccess, Tombstone } from './types.js';

export interface Tx {
  getRecord(target: string): LockRecord | undefined;
  putRecord(rec: LockRecord): void;
  deleteRecord(target: string): void;
  /** The target's tombstones, newest first (at most TOMBSTONES_PER_TARGET). */
  getTombstones(target: string): Tombstone[];
  putTombstones(target: string, tombs: Tombstone[]): void;
  version(target: string): number;
  /** The target's size: its fixed size, or as far as it was written. */
  size(target: string): number;
  /** The size fixed when the target was created, 0 if none. */
  fixedSize(target: string): number;
  /** Fix the size of a target never written (it reads as that many zero bytes). */
  fixSize(target: string, size: number): void;
  /** Largest size this store lets a target be given. */
  readonly maxSize: number;
  readData(target: string, offset: number, length: number): Uint8Array;
  /**
   * Write bytes at offset (extending with zeros), bump the version, return the new version. A page
   * the write leaves all zeros is not kept (it reads as zeros), in this same transaction.
   */
  writeData(target: string, offset: number, data: Uint8Array): number;
  /**
   * The pages first..last (numbers of PAGE_BYTES pages) the target keeps, ascending, at most `max` of
   * them (the first ones). A page never written or left all zeros is not kept.
   */
  keptPages(target: string, first: number, last: number, max: number): number[];
  /**
   * The pages written since version `since` (their last write made a version above it), ascending,
   * at most `max` (the first ones): pages that hold data and pages a write left all zeros (freed) alike.
   * Undefined: the store cannot tell (it kept no page versions before a later version: an older file).
   */
  changedPages(target: string, since: number, max: number): number[] | undefined;
  /** For inspection: how many pages of PAGE_BYTES hold the target's data (all-zero pages hold none). */
  pages(target: string): number;
  /** The target's owner and access list as recorded (undefined: none recorded). */
  getAccess(target: string): TargetAccess | undefined;
  putAccess(target: string, access: TargetAccess): void;
}

/** What an adapter read of one target for a rule to decide on. */
export interface TargetView {
  readonly record: LockRecord | undefined;
  readonly version: number;
  /** The size fixed when the target was created, 0 if none. */
  readonly fixedSize: number;
  /** The target's tombstones, newest first; read only by the rules that need them. */
  tombstones(): Tombstone[];
  /**
   * The target's owner and access list as recorded; undefined for a target nobody has, and for one
   * written by an earlier version, which kept none (see accessOf).
   */
  readonly access: TargetAccess | undefined;
  /**
   * Whether the record's lock is live, when the engine judges it (etcd: the lock key still hangs on
   * its session's lease). Undefined: judged by the rule from the record's `expiresAt` and the store's now.
   */
  readonly live?: boolean | undefined;
  /** The pages written (or freed) since version `since`, at most `max` (Tx.changedPages); absent: the store cannot tell. */
  changedPages?: ((since: number, max: number) => number[] | undefined) | undefined;
  /** The target's size (fixed, or as far as written); absent: its fixed size stands for it. */
  readonly size?: number | undefined;
}

/** A write a decision asks for, on the target it decided about. */
export type Effect =
  | { kind: 'put'; record: LockRecord }
  | { kind: 'delete' }
  | { kind: 'tombstones'; tombstones: Tombstone[] }
  /** Bytes at offset (extending with zeros); the target's version goes up by one. */
  | { kind: 'data'; offset: number; data: Uint8Array }
  /** The target, never written, gets a fixed size. */
  | { kind: 'size'; size: number }
  /** The target's owner and access list are recorded as these. */
  | { kind: 'access'; access: TargetAccess };

export interface Decision<T> {
  out: T;
  effects: Effect[];
}

/** A decision that writes nothing. */
export const none = <T>(out: T): Decision<T> => ({ out, effects: [] });
