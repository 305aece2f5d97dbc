/**
 * The etcd store's key layout and what it reads of one target: the keys under the prefix (see
 * store/etcd.ts), the page keys and their numbers, and a target's state as read from its keys.
 */
import { MAX_DISK_BYTES, PAGE_BYTES, type Grant, type LockRecord, type TargetAccess, type Tombstone } from './types.js';

export const PAGE = PAGE_BYTES;

/** One key of a target as read: value and revisions (mod '0': absent). */
export interface Kv {
  value: Buffer | undefined;
  mod: string;
  lease: string;
}

export const ABSENT: Kv = { value: undefined, mod: '0', lease: '0' };

/** What a batch knows of one target: as read, then as its earlier decisions left it. */
export interface TargetState {
  r: Kv;
  t: Kv;
  v: Kv;
  l: Kv;
  record: LockRecord | undefined;
  tombstones: Tombstone[];
  version: number;
  size: number;
  /** The size fixed at creation, 0 if none. */
  fixed: number;
  /** The owner and access list as recorded (undefined: none, a target nobody has or one of an earlier version). */
  access: TargetAccess | undefined;
  live: boolean;
  /** The lease the lock hangs on now ('0': none). */
  lockLease: string;
  /** Page versions are kept for the writes after this version (undefined: not yet, a target of an earlier version). */
  from: number | undefined;
}

export const enc = (target: string) => encodeURIComponent(target);

/**
 * The key layout this code reads and writes, kept in the key `format` under the prefix. A store without
 * it that has keys under `d/` was written by the earlier layout (page numbers zero-padded to 8 digits,
 * whose byte order is not their number order from page 100,000,000 on): it is refused, or, with the
 * option movePages, its pages are moved to `p/` before it serves. A store marked with another layout is refused.
 */
export const KEY_LAYOUT = '2';
/** Where the pages are, under the prefix; and where the earlier layout kept them. */
export const PAGES = 'p/';
export const OLD_PAGES = 'd/';
/**
 * Where each page's last version is, under the prefix: `w/<target>/<page>` holds the version of the
 * write that last wrote the page, or left it all zeros (its page key deleted, this one kept). Stores
 * written before it have none: their targets' `from` (in the v key) says since when they are kept.
 */
export const CHANGES = 'w/';
/**
 * Digits of a page number in its key: fixed, so etcd's byte order of page keys is their number order.
 * 10^12 pages of 4 KiB is 4 EB, far above the 2^28 pages of a disk of MAX_DISK_BYTES.
 */
export const PAGE_DIGITS = 12;
export const PAGE_LIMIT = 10 ** PAGE_DIGITS;
export const PAGE_PART = new RegExp(`^[0-9]{${PAGE_DIGITS}}$`);
if (MAX_DISK_BYTES / PAGE > PAGE_LIMIT) throw new Error('etcd page keys are too narrow for MAX_DISK_BYTES');
/** The last part of a page's key: its number in PAGE_DIGITS decimal digits. */
export function pageKey(page: number): string {
  if (!Number.isSafeInteger(page) || page < 0 || page >= PAGE_LIMIT)
    throw new RangeError(`etcd: page ${page} has no key`);
  return String(page).padStart(PAGE_DIGITS, '0');
}
/** The page number in the last part of a page key (`old`: of the earlier layout, digits of any width). */
export function pageOfKey(part: string, old = false): number {
  // A key that is not a page's fails the one call that met it, not the store.
  if (!(old ? /^[0-9]{1,16}$/ : PAGE_PART).test(part))
    throw new Error(`etcd: ${JSON.stringify(part)} is not a page key`);
  return Number(part);
}
/** The end of a prefix range: the prefix with its last byte plus one. */
export function prefixEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  b[b.length - 1]! += 1;
  return b;
}
export const json = <T>(kv: Kv, fallback: T): T => (kv.value ? (JSON.parse(kv.value.toString()) as T) : fallback);

/**
 * A target's v key: its version, its size (fixed, or as far as written), its fixed size if it has one,
 * and its owner and access list once recorded (absent in keys written by an earlier version).
 */
export interface Meta {
  version: number;
  size: number;
  fixed?: number;
  owner?: string;
  grants?: Grant[];
  /** The version after which every write's pages have their `w/` key (absent in keys of an earlier version). */
  from?: number;
}

export const metaOf = (s: TargetState): Buffer =>
  Buffer.from(
    JSON.stringify({
      version: s.version,
      size: s.size,
      ...(s.fixed ? { fixed: s.fixed } : {}),
      ...(s.access ? { owner: s.access.owner, grants: s.access.grants } : {}),
      ...(s.from !== undefined ? { from: s.from } : {}),
    }),
  );
