/**
 * The simulation store's transactions over the shared state: the rules' view of it (MemoryStore's)
 * with an undo log, so a transaction or savepoint that throws is put back exactly, and each target's
 * change stamp, which a late commit compares.
 */
import { memoryTx, type MemoryState } from '../store/memory.js';
import type { Tx } from '../store/rules.js';
import { PAGE_BYTES, type TargetAccess } from '../store/types.js';

type TargetState = MemoryState['targets'] extends Map<string, infer V> ? V : never;

/**
 * Every target's change stamp, shared by every instance over the same database: a number that moves
 * whenever a transaction changes the target (record, tombstones, bytes, size), so a late commit can
 * tell whether what it read is still as it was (the revisions an etcd transaction compares).
 */
const changeStamps = new WeakMap<MemoryState, { next: number; of: Map<string, number> }>();
export function stampsOf(state: MemoryState): { next: number; of: Map<string, number> } {
  let s = changeStamps.get(state);
  if (!s) changeStamps.set(state, (s = { next: 0, of: new Map() }));
  return s;
}

/**
 * The rules' view of the shared state (MemoryStore's), logging how to undo each change. Stored
 * records and tombstone lists are replaced, never changed in place, so undoing one puts the old
 * object back; a target's bytes are changed in place, so undoing a write copies back only the
 * bytes it overwrote (a write that grows the buffer leaves the old one as it was, and the undo
 * entry puts it back).
 */
export function undoableTx(state: MemoryState, undo: Array<() => void>, compare: (target: string) => void): Tx {
  const { records, tombstones, targets } = state;
  const base = memoryTx(state);
  const stamps = stampsOf(state);
  /** The target changed: a new stamp, put back if the change is undone. */
  const changed = (t: string) => {
    const prev = stamps.of.get(t);
    stamps.of.set(t, ++stamps.next);
    undo.push(() => restore(stamps.of, t, prev));
  };
  const read =
    <A extends unknown[], R>(f: (t: string, ...rest: A) => R) =>
    (t: string, ...rest: A): R => {
      compare(t);
      return f(t, ...rest);
    };
  return {
    ...base,
    getRecord: read(base.getRecord.bind(base)),
    getTombstones: read(base.getTombstones.bind(base)),
    version: read(base.version.bind(base)),
    size: read(base.size.bind(base)),
    fixedSize: read(base.fixedSize.bind(base)),
    readData: read(base.readData.bind(base)),
    keptPages: read(base.keptPages.bind(base)),
    changedPages: read(base.changedPages.bind(base)),
    getAccess: read(base.getAccess.bind(base)),
    putAccess: (t, a) => {
      const owners = (state.access ??= new Map<string, TargetAccess>());
      const prev = owners.get(t);
      undo.push(() => restore(owners, t, prev));
      changed(t);
      base.putAccess(t, a);
    },
    putRecord: (r) => {
      const target = r.target;
      const prev = records.get(target);
      undo.push(() => restore(records, target, prev));
      changed(target);
      base.putRecord(r);
    },
    deleteRecord: (t) => {
      const prev = records.get(t);
      if (!prev) return;
      undo.push(() => records.set(t, prev));
      changed(t);
      base.deleteRecord(t);
    },
    putTombstones: (t, list) => {
      const prev = tombstones.get(t);
      undo.push(() => restore(tombstones, t, prev));
      changed(t);
      base.putTombstones(t, list);
    },
    writeData: (t, offset, data) => {
      const cur = targets.get(t);
      undo.push(cur ? undoWrite(cur, offset, offset + data.length) : () => targets.delete(t));
      changed(t);
      return base.writeData(t, offset, data);
    },
    fixSize: (t, size) => {
      const cur = targets.get(t);
      if (cur) {
        const { size: was, fixed } = cur;
        undo.push(() => Object.assign(cur, { size: was, fixed }));
      } else undo.push(() => targets.delete(t));
      changed(t);
      base.fixSize(t, size);
    },
  };
}

export function restore<K, V>(map: Map<K, V>, key: K, prev: V | undefined): void {
  if (prev === undefined) map.delete(key);
  else map.set(key, prev);
}

/**
 * How to undo a write of [offset, end) to `cur`: its buffer, size and version as they are now, and
 * the bytes it is about to overwrite. Bytes past a target's size are always zero, so the part of the
 * write past the current size is undone by zeroing it, without copying.
 */
function undoWrite(cur: TargetState, offset: number, end: number): () => void {
  const { buf, size, version } = cur;
  const keepTo = Math.min(end, size);
  const saved = offset < keepTo ? buf.slice(offset, keepTo) : undefined;
  // The versions of the pages the write touches, as they are now (undefined: never written).
  const pages: Array<[number, number | undefined]> = [];
  if (end > offset)
    for (let p = Math.floor(offset / PAGE_BYTES); p * PAGE_BYTES < end; p++) pages.push([p, cur.pv?.get(p)]);
  return () => {
    for (const [p, v] of pages) if (cur.pv) restore(cur.pv, p, v);
    if (cur.buf !== buf) cur.buf = buf;
    else {
      if (saved) buf.set(saved, offset);
      const zeroFrom = Math.max(offset, size);
      const zeroTo = Math.min(end, buf.length);
      if (zeroTo > zeroFrom) buf.fill(0, zeroFrom, zeroTo);
    }
    cur.size = size;
    cur.version = version;
  };
}
