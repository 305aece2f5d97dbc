/** The in-memory store: deterministic, for simulation and tests. */
import { TxStore } from './base.js';
import type { Tx } from './rules.js';
import {
  MAX_TARGET_BYTES,
  PAGE_BYTES,
  StoreUnavailableError,
  isZeroPage,
  type LockRecord,
  type TargetAccess,
  type Tombstone,
} from './types.js';

export interface MemoryState {
  records: Map<string, LockRecord>;
  tombstones: Map<string, Tombstone[]>;
  /**
   * Each target's bytes are `buf[0, size)`, zeros past `buf`'s end; `buf` has room to grow, so a write
   * copies only itself. `fixed`: the size fixed at creation (0: none). `pv`: each page written, with
   * the version its last write made (a page left all zeros keeps its entry: its freeing is a change).
   */
  targets: Map<string, { buf: Uint8Array; size: number; version: number; fixed?: number; pv?: Map<number, number> }>;
  /** Each target's owner and access list (made on first use when a state without it is passed in). */
  access?: Map<string, TargetAccess>;
}

export class MemoryStore extends TxStore {
  readonly kind = 'memory';
  private available = true;
  private readonly txImpl: Tx;

  /**
   * Pass another store's `state` to model a replica restart over the same data; `now` is the store's
   * clock, on which lock expiries are set and judged (default: this process's monotonic clock, which a
   * step of the wall clock does not move).
   */
  constructor(
    readonly state: MemoryState = { records: new Map(), tombstones: new Map(), targets: new Map() },
    now: () => number = () => Math.floor(performance.timeOrigin + performance.now()),
  ) {
    super();
    this.clockNow = now;
    this.txImpl = memoryTx(state);
  }

  /** Make every operation fail as unavailable (a dismounted volume) until set back. */
  setAvailable(available: boolean): void {
    this.available = available;
  }

  protected tx<T>(fn: (tx: Tx) => T): T {
    if (!this.available) throw new StoreUnavailableError('memory store is unavailable');
    return fn(this.txImpl);
  }

  /** Every target's bytes (for a final check). */
  targets(): Array<{ target: string; data: Uint8Array }> {
    return [...this.state.targets]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([target, t]) => ({ target, data: bytesOf(t, 0, t.size) }));
  }

  async ping(): Promise<void> {
    if (!this.available) throw new StoreUnavailableError('memory store is unavailable');
  }

  async shutdown(): Promise<void> {}
}

/**
 * The rules' view of a MemoryState, changing it in place (a write copies only itself). The
 * simulation's store wraps it with an undo log.
 */
export function memoryTx(state: MemoryState): Tx {
  const { records, tombstones, targets } = state;
  const access = (state.access ??= new Map<string, TargetAccess>());
  return {
    getRecord: (t) => records.get(t),
    putRecord: (r) => void records.set(r.target, { ...r }),
    deleteRecord: (t) => void records.delete(t),
    getTombstones: (t) => tombstones.get(t) ?? [],
    putTombstones: (t, list) =>
      void tombstones.set(
        t,
        list.map((x) => ({ ...x })),
      ),
    getAccess: (t) => access.get(t),
    putAccess: (t, a) => void access.set(t, { owner: a.owner, grants: a.grants.map((g) => ({ ...g })) }),
    version: (t) => targets.get(t)?.version ?? 0,
    size: (t) => targets.get(t)?.size ?? 0,
    fixedSize: (t) => targets.get(t)?.fixed ?? 0,
    // One buffer per target: a fixed size beyond what a write may grow it to would not fit in memory.
    maxSize: MAX_TARGET_BYTES,
    fixSize: (t, size) => {
      const cur = targets.get(t);
      if (cur) {
        cur.size = Math.max(cur.size, size);
        cur.fixed = size;
      } else targets.set(t, { buf: new Uint8Array(0), size, version: 0, fixed: size });
    },
    readData: (t, offset, length) => {
      const cur = targets.get(t);
      return cur ? bytesOf(cur, Math.min(offset, cur.size), Math.min(cur.size, offset + length)) : new Uint8Array(0);
    },
    writeData: (t, offset, data) => {
      let cur = targets.get(t);
      if (!cur) targets.set(t, (cur = { buf: new Uint8Array(0), size: 0, version: 0 }));
      const end = offset + data.length;
      // Zeros past the buffer's end are there already (they read as zeros): the buffer grows only to
      // the write's last byte that is not zero.
      let keep = data.length;
      if (end > cur.buf.length) while (keep > 0 && offset + keep > cur.buf.length && data[keep - 1] === 0) keep--;
      const stored = offset + keep;
      // Past the buffer's room a new buffer replaces it (the old one is left as it was).
      if (stored > cur.buf.length) {
        const grown = new Uint8Array(Math.max(stored, Math.min(2 * cur.buf.length, MAX_TARGET_BYTES)));
        grown.set(cur.buf.subarray(0, cur.size));
        cur.buf = grown;
      }
      if (keep > 0) cur.buf.set(keep === data.length ? data : data.subarray(0, keep), offset);
      cur.size = Math.max(cur.size, end);
      const version = ++cur.version;
      const pv = (cur.pv ??= new Map());
      if (data.length > 0) for (let p = Math.floor(offset / PAGE_BYTES); p * PAGE_BYTES < end; p++) pv.set(p, version);
      return version;
    },
    keptPages: (t, first, last, max) => {
      const cur = targets.get(t);
      const out: number[] = [];
      if (!cur) return out;
      const to = Math.min(cur.size, cur.buf.length);
      for (let p = first; p <= last && p * PAGE_BYTES < to && out.length < max; p++)
        if (!isZeroPage(cur.buf.subarray(p * PAGE_BYTES, Math.min(to, (p + 1) * PAGE_BYTES)))) out.push(p);
      return out;
    },
    changedPages: (t, since, max) => {
      const out: number[] = [];
      for (const [p, v] of targets.get(t)?.pv ?? []) if (v > since) out.push(p);
      return out.sort((a, b) => a - b).slice(0, max);
    },
    pages: (t) => {
      const cur = targets.get(t);
      if (!cur) return 0;
      let n = 0;
      const to = Math.min(cur.size, cur.buf.length);
      for (let at = 0; at < to; at += PAGE_BYTES)
        if (!isZeroPage(cur.buf.subarray(at, Math.min(to, at + PAGE_BYTES)))) n++;
      return n;
    },
  };
}

/** Bytes [from, to) of a target: from its buffer, zeros past the buffer's end (a fixed size not yet written). */
function bytesOf(t: { buf: Uint8Array }, from: number, to: number): Uint8Array {
  if (to <= t.buf.length) return t.buf.slice(from, to);
  const out = new Uint8Array(to - from);
  if (from < t.buf.length) out.set(t.buf.subarray(from), 0);
  return out;
}
