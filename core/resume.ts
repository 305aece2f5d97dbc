/**
 * Resuming, decided purely: which paused handles go in which resume batch, and what a grant means for
 * a handle's operations.
 */
import type { ResumeItem } from '../transport/messages.js';
import { filler, type CoreHandle, type Op } from './handle.js';

/** A resume batch's size limits, well inside the codec's header limit for the request and its answer. */
export const RESUME_BATCH = 1000;
export const RESUME_BATCH_BYTES = 128 * 1024;
/** JSON punctuation, field names, mode, version and instance of one resume item (or its answer), at most. */
const RESUME_ITEM_OVERHEAD = 192;

/** A handle's resume item; a writer's carries `epoch`, the hand-over counter of this request. */
export function resumeItem(h: CoreHandle, epoch: () => number): ResumeItem {
  // The version it last saw: a reader is granted only at it; a denial says what changed since it.
  const item: ResumeItem = {
    target: h.target,
    requestId: h.requestId,
    principal: h.principal,
    mode: h.mode,
    version: h.version,
  };
  if (h.mode === 'write') {
    item.instance = h.instance;
    if (h.takeover) item.takeover = true;
    item.epoch = epoch();
  }
  return item;
}

/** The paused handles in batches that fit a frame: at most RESUME_BATCH items and about RESUME_BATCH_BYTES. */
export function resumeBatches(
  handles: Iterable<CoreHandle>,
  epoch: () => number,
): Array<{ hs: CoreHandle[]; items: ResumeItem[] }> {
  const out: Array<{ hs: CoreHandle[]; items: ResumeItem[] }> = [];
  let batch: CoreHandle[] = [];
  let items: ResumeItem[] = [];
  let bytes = 0;
  for (const h of handles) {
    if (h.state !== 'paused') continue;
    const size = RESUME_ITEM_OVERHEAD + h.target.length + h.requestId.length + h.principal.length;
    if (batch.length > 0 && (batch.length >= RESUME_BATCH || bytes + size > RESUME_BATCH_BYTES)) {
      out.push({ hs: batch, items });
      batch = [];
      items = [];
      bytes = 0;
    }
    batch.push(h);
    items.push(resumeItem(h, epoch));
    bytes += size;
  }
  if (batch.length > 0) out.push({ hs: batch, items });
  return out;
}

/**
 * A grant with the store's `lastSeq`: writes the store applied before the failure are acknowledged
 * (`applied`); the rest are replayed in order with the seqs they were first sent with, so a late
 * copy of an old frame can never be applied as another write. A seq the store never saw and no
 * write holds gets a filler, so nothing waits on it. Sets the handle's ops and next seq.
 */
export function afterGrant(h: CoreHandle, lastSeq: number): { applied: Op[]; replay: Op[] } {
  const applied: Op[] = [];
  const replay: Op[] = [];
  let expected = lastSeq + 1;
  for (const op of h.ops) {
    if (op.kind === 'write' && op.seq > 0 && op.seq <= lastSeq) {
      if (op.settle) applied.push(op);
      continue;
    }
    if (op.kind === 'write' && op.seq > 0) {
      while (op.seq > expected) replay.push(filler(expected++));
      expected = op.seq + 1;
    }
    op.inflight = 0;
    replay.push(op);
  }
  h.ops = replay;
  h.nextSeq = Math.max(h.nextSeq, expected);
  return { applied, replay };
}
