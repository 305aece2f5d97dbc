/**
 * The bytes of a transmission reply (doc/proto.md of the NetworkBlockDevice project): a simple reply
 * for a client that did not negotiate structured replies; otherwise one structured reply per request,
 * in a single chunk marked DONE: READ's data as OFFSET_DATA, BLOCK_STATUS's extents of the
 * `base:allocation` context, NONE for any other success, ERROR (with the reason) for any failure.
 * And the `base:allocation` extents of a range from the parts the store keeps.
 */
import { REPLY, REPLY_FLAG_DONE, SIMPLE_REPLY_MAGIC, STATE, STRUCTURED_REPLY_MAGIC } from './nbd-wire.js';

/** What a request is answered with: nothing, READ's bytes, or BLOCK_STATUS's extents as [length, flags]. */
export type Served = Uint8Array | { status: Array<[number, number]> } | undefined;

/** The context id `base:allocation` is given when SET_META_CONTEXT selects it (LIST answers 0: reserved). */
export const ALLOCATION_CONTEXT_ID = 1;

/** The longest error message a chunk carries (the protocol's limit for strings). */
const MAX_MESSAGE_BYTES = 4096;

/** The reply to one request: `error` 0 and what it served, or an NBD error and why. */
export function replyBytes(
  structured: boolean,
  cookie: bigint,
  offset: bigint,
  error: number,
  served: Served,
  message: string,
): Buffer {
  if (!structured) {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(error, 4);
    h.writeBigUInt64BE(cookie, 8);
    return served instanceof Uint8Array && error === 0 ? Buffer.concat([h, served]) : h;
  }
  if (error !== 0) {
    const text = Buffer.from(message).subarray(0, MAX_MESSAGE_BYTES);
    const p = Buffer.alloc(6 + text.length);
    p.writeUInt32BE(error, 0);
    p.writeUInt16BE(text.length, 4);
    text.copy(p, 6);
    return chunk(cookie, REPLY.ERROR, [p]);
  }
  if (served instanceof Uint8Array && served.length > 0) {
    const at = Buffer.alloc(8);
    at.writeBigUInt64BE(offset, 0);
    return chunk(cookie, REPLY.OFFSET_DATA, [at, served]);
  }
  if (served && !(served instanceof Uint8Array)) {
    const p = Buffer.alloc(4 + 8 * served.status.length);
    p.writeUInt32BE(ALLOCATION_CONTEXT_ID, 0);
    served.status.forEach(([length, flags], i) => {
      p.writeUInt32BE(length, 4 + 8 * i);
      p.writeUInt32BE(flags, 8 + 8 * i);
    });
    return chunk(cookie, REPLY.BLOCK_STATUS, [p]);
  }
  return chunk(cookie, REPLY.NONE, []);
}

/** One structured reply chunk, the last of its reply. */
function chunk(cookie: bigint, type: number, payload: Uint8Array[]): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(REPLY_FLAG_DONE, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeUInt32BE(
    payload.reduce((n, p) => n + p.length, 0),
    16,
  );
  return Buffer.concat([h, ...payload]);
}

/**
 * The `base:allocation` extents of `[offset, end)` as [length, flags]: 0 for a part the store keeps,
 * HOLE|ZERO for the rest (the store keeps no page that is all zeros: what it does not keep reads as
 * zeros). `one`: only the first (NBD_CMD_FLAG_REQ_ONE).
 */
export function allocation(
  offset: number,
  end: number,
  kept: Array<[number, number]>,
  one: boolean,
): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let at = offset;
  for (const [from, length] of kept) {
    if (from > at) out.push([from - at, STATE.HOLE | STATE.ZERO]);
    out.push([length, 0]);
    at = from + length;
  }
  if (end > at) out.push([end - at, STATE.HOLE | STATE.ZERO]);
  return one ? out.slice(0, 1) : out;
}
