/** What the history checker follows of one target: its holder, its grants, and the bytes its applied writes give. */

export interface TargetState {
  holder: { requestId: string; session: string } | undefined;
  /** When the store last granted or renewed the holder's lock (the hold period runs from there). */
  extendedAt: number;
  /** Until when the holder's lock surely lasts: a grant's, at least a renewal interval; a renewal's, at least the hold period. */
  promisedUntil: number;
  /** For each requestId: index into `applied` when its current record was freshly granted. */
  epoch: Map<string, number>;
  /** requestIds granted the target freshly, in order, with the index into `applied` at that time. */
  fresh: Array<{ requestId: string; at: number }>;
  /** requestIds whose record was released (closed). */
  released: Set<string>;
  applied: Array<{ requestId: string; bytes: string; version: number }>;
  /** The bytes the applied writes give: `data[0, size)`. */
  content: { data: Buffer; size: number };
  version: number;
  seqs: Set<string>;
  bytesApplied: Map<string, number>;
}

/** Apply a write (latin1 text, one char per byte) to a target's bytes, growing them with zeros. */
export function splice(c: { data: Buffer; size: number }, offset: number, bytes: string): void {
  const end = offset + bytes.length;
  if (end > c.data.length) {
    const grown = Buffer.alloc(Math.max(end, 2 * c.data.length));
    c.data.copy(grown, 0, 0, c.size);
    c.data = grown;
  }
  c.data.write(bytes, offset, 'latin1');
  c.size = Math.max(c.size, end);
}

/** Bytes [from, to) of a target, as latin1 text (cut at its size). */
export function slice(c: { data: Buffer; size: number }, from: number, to: number): string {
  return c.data.toString('latin1', Math.min(from, c.size), Math.min(to, c.size));
}

/** Whether bytes read at `offset` hold the whole of a write, at the write's own offset (where it would have landed). */
export function holds(data: { offset: number; bytes: string }, w: { offset: number; bytes: string }): boolean {
  const at = w.offset - data.offset;
  return (
    w.bytes.length > 0 && at >= 0 && at + w.bytes.length <= data.bytes.length && data.bytes.startsWith(w.bytes, at)
  );
}
