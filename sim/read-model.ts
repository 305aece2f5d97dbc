/**
 * What an application may read: per target, the writes applications invoked, with when each was
 * invoked and acknowledged (positions in the history, a real-time order). A read must return, byte
 * range by byte range, what some linearization of those writes allows:
 *
 * - a range covered by the same writes holds exactly one of them, or zeros if none of them was
 *   acknowledged before the read began (writes are atomic, so a range never mixes two writes);
 * - a write W is allowed there only if it was invoked before the read returned, and no write W2 over
 *   the range was invoked after W was acknowledged and acknowledged before the read began (W2 then
 *   surely overwrote W);
 * - a write rejected with a "not applied" code is never allowed (S5); a write rejected
 *   OUTCOME_UNKNOWN, or whose process crashed, stays possible forever, acknowledged never.
 *
 * Cheap by construction: the workload writes values unique per write, reads are checked range by
 * range against the few writes over them, and writes every future read would rule out are pruned.
 */

export interface ModelWrite {
  offset: number;
  end: number;
  bytes: string;
  invokedAt: number;
  /** Position of the acknowledgement, Infinity while unacknowledged or unknown. */
  ackedAt: number;
  /** Rejected with a code that says it was not applied. */
  rejected: boolean;
  proc: string;
}

export interface ReadVerdict {
  /** 'S5' when the read shows a rejected write's bytes, 'S3' when it shows what no linearization allows. */
  guarantee: 'S3' | 'S5';
  message: string;
}

/** Writes are indexed by the 256-byte slots they touch, so a read looks only at the writes over it. */
const SLOT_SHIFT = 8;

export class TargetModel {
  private readonly slots = new Map<number, ModelWrite[]>();
  /** The last few writes pruned from each slot: only to name what a stale read returned. */
  private readonly gone = new Map<number, ModelWrite[]>();
  /** Reads in flight: invocation positions, so pruning never removes what they may still see. */
  private readonly reading = new Map<number, number>();
  /** Acknowledged writes waiting until no read in flight began before their acknowledgement. */
  private readonly toPrune: ModelWrite[] = [];

  invokeWrite(id: number, w: Omit<ModelWrite, 'ackedAt' | 'rejected'>, byId: Map<number, ModelWrite>): void {
    const mw: ModelWrite = {
      offset: w.offset,
      end: w.end,
      bytes: w.bytes,
      invokedAt: w.invokedAt,
      ackedAt: Infinity,
      rejected: false,
      proc: w.proc,
    };
    if (mw.end > mw.offset) {
      for (let slot = mw.offset >> SLOT_SHIFT; slot <= (mw.end - 1) >> SLOT_SHIFT; slot++) {
        const list = this.slots.get(slot);
        if (list) list.push(mw);
        else this.slots.set(slot, [mw]);
      }
    }
    byId.set(id, mw);
  }

  ack(w: ModelWrite, at: number): void {
    w.ackedAt = at;
    this.toPrune.push(w);
    this.prune();
  }

  invokeRead(id: number, at: number): void {
    this.reading.set(id, at);
  }

  abandonRead(id: number): void {
    this.reading.delete(id);
  }

  /** Check a read of `length` bytes at `offset`, invoked at `invokedAt`, that returned `bytes` now. */
  read(id: number, offset: number, length: number, bytes: string, invokedAt: number): ReadVerdict | undefined {
    this.reading.delete(id);
    const end = offset + length;
    if (end <= offset) return undefined;
    const found = new Set<ModelWrite>();
    for (let slot = offset >> SLOT_SHIFT; slot <= (end - 1) >> SLOT_SHIFT; slot++) {
      for (const w of this.slots.get(slot) ?? []) if (w.offset < end && w.end > offset) found.add(w);
    }
    const over = [...found];
    // Breakpoints: where the set of writes covering a position changes.
    const cuts = new Set<number>([offset, end]);
    for (const w of over) {
      if (w.offset > offset) cuts.add(w.offset);
      if (w.end < end) cuts.add(w.end);
    }
    const points = [...cuts].sort((a, b) => a - b);
    for (let k = 0; k + 1 < points.length; k++) {
      const lo = points[k]!;
      const hi = points[k + 1]!;
      const cover = over.filter((w) => w.offset <= lo && w.end >= hi);
      const verdict = this.segment(
        lo,
        hi,
        cover,
        offset,
        bytes,
        invokedAt,
        () => this.gone.get(lo >> SLOT_SHIFT) ?? [],
      );
      if (verdict) return verdict;
    }
    return undefined;
  }

  private segment(
    lo: number,
    hi: number,
    cover: ModelWrite[],
    offset: number,
    bytes: string,
    invokedAt: number,
    pruned: () => ModelWrite[],
  ): ReadVerdict | undefined {
    // The latest invocation among writes over the range acknowledged before the read began.
    let floor = -1;
    for (const w of cover) if (!w.rejected && w.ackedAt < invokedAt && w.invokedAt > floor) floor = w.invokedAt;
    const allowed = cover.filter((w) => !w.rejected && !(floor > w.ackedAt));
    const got = bytes.slice(lo - offset, hi - offset);
    const range = `[${lo}, ${hi})`;
    if (got.length < hi - lo) {
      // The target ended inside the read: a range is never partly written, and nothing over the
      // missing range may have been acknowledged before the read began.
      if (got.length > 0)
        return {
          guarantee: 'S3',
          message: `read returned ${got.length} of ${hi - lo} bytes at ${range}: one write never lands in part`,
        };
      const lost = cover.find((w) => !w.rejected && w.ackedAt < invokedAt);
      if (lost)
        return {
          guarantee: 'S3',
          message: `stale read: returned nothing at ${range}, as before any write, but ${describe(lost)} was acknowledged before the read began`,
        };
      return undefined;
    }
    if (floor < 0 && isZeros(got)) return undefined;
    for (const w of allowed) if (w.bytes.slice(lo - w.offset, hi - w.offset) === got) return undefined;
    const ghost = cover.find((w) => w.rejected && w.bytes.slice(lo - w.offset, hi - w.offset) === got);
    if (ghost)
      return {
        guarantee: 'S5',
        message: `read at ${range} returned the bytes of ${describe(ghost)}, which was rejected as not applied`,
      };
    const was = (w: ModelWrite) => w.offset <= lo && w.end >= hi && w.bytes.slice(lo - w.offset, hi - w.offset) === got;
    const stale = cover.find((w) => !w.rejected && floor > w.ackedAt && was(w)) ?? pruned().find(was);
    const want = allowed.length > 0 ? allowed.map(describe).join(' or ') : 'zeros';
    if (stale)
      return {
        guarantee: 'S3',
        message: `stale read at ${range}: returned ${describe(stale)}, overwritten by an acknowledged write before the read began; allowed: ${want}`,
      };
    if (isZeros(got))
      return {
        guarantee: 'S3',
        message: `stale read at ${range}: returned zeros, as before any write, after an acknowledged write there; allowed: ${want}`,
      };
    return {
      guarantee: 'S3',
      message: `read at ${range} returned ${JSON.stringify(got.slice(0, 40))}, which no order of the writes allows; allowed: ${want}`,
    };
  }

  /**
   * Forget, slot by slot, the writes an acknowledged write surely overwrote there (acknowledged
   * before it was invoked): no read can see them once no read in flight began before it was acknowledged.
   */
  private prune(): void {
    let oldestRead = Infinity;
    for (const at of this.reading.values()) if (at < oldestRead) oldestRead = at;
    while (this.toPrune.length > 0 && this.toPrune[0]!.ackedAt < oldestRead) {
      const v = this.toPrune.shift()!;
      if (v.end <= v.offset) continue;
      for (let slot = v.offset >> SLOT_SHIFT; slot <= (v.end - 1) >> SLOT_SHIFT; slot++) {
        const list = this.slots.get(slot);
        if (!list) continue;
        const lo = Math.max(slot << SLOT_SHIFT, v.offset);
        const hi = Math.min((slot + 1) << SLOT_SHIFT, v.end);
        // u's part in this slot lies inside v's, and u was acknowledged before v was invoked.
        const kept = list.filter(
          (u) =>
            u === v ||
            !(
              u.ackedAt < v.invokedAt &&
              Math.max(u.offset, slot << SLOT_SHIFT) >= lo &&
              Math.min(u.end, (slot + 1) << SLOT_SHIFT) <= hi
            ),
        );
        if (kept.length === list.length) continue;
        this.slots.set(slot, kept);
        const old = (this.gone.get(slot) ?? []).concat(list.filter((u) => !kept.includes(u)));
        this.gone.set(slot, old.slice(-8));
      }
    }
  }
}

function isZeros(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) !== 0) return false;
  return true;
}

function describe(w: ModelWrite): string {
  const state = w.rejected ? 'rejected' : w.ackedAt === Infinity ? 'unacknowledged' : 'acknowledged';
  return `the ${state} write of ${w.proc} at [${w.offset}, ${w.end}) ${JSON.stringify(w.bytes.slice(0, 24))}`;
}
