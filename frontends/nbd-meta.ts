/**
 * The metadata contexts of the NBD handshake (doc/proto.md, "Metadata querying"): this export offers
 * one, `base:allocation`. NBD_OPT_LIST_META_CONTEXT lists it for no query, `base:` or
 * `base:allocation`; NBD_OPT_SET_META_CONTEXT selects it for the export name given when a query names
 * it. Both come only after NBD_OPT_STRUCTURED_REPLY; other queries select and list nothing.
 */
import { ALLOCATION_CONTEXT_ID } from './nbd-replies.js';
import { OPT, REP } from './nbd-wire.js';

export const ALLOCATION = 'base:allocation';
/** Queries one option may carry; more are refused NBD_REP_ERR_TOO_BIG. */
const MAX_QUERIES = 128;

/** A LIST or SET_META_CONTEXT option's export name and queries, or why it is malformed. */
export function metaRequest(data: Buffer): { name: string; queries: string[] } | string {
  if (data.length < 8) return 'short request';
  const nameLength = data.readUInt32BE(0);
  if (data.length < 8 + nameLength) return 'short request';
  const name = data.subarray(4, 4 + nameLength).toString('utf8');
  const count = data.readUInt32BE(4 + nameLength);
  const queries: string[] = [];
  let at = 8 + nameLength;
  for (let i = 0; i < count; i++) {
    if (data.length < at + 4) return 'short request';
    const n = data.readUInt32BE(at);
    if (data.length < at + 4 + n) return 'short request';
    queries.push(data.subarray(at + 4, at + 4 + n).toString('utf8'));
    at += 4 + n;
  }
  if (at !== data.length) return 'bad length';
  return { name, queries };
}

/**
 * The replies to a LIST or SET_META_CONTEXT option (each a type and its data), and for SET the
 * export name `base:allocation` is now selected for (null: nothing is selected: a SET replaces what
 * an earlier one selected, even when it fails).
 */
export function metaOption(
  option: number,
  data: Buffer,
  structured: boolean,
): { replies: Array<[number, Buffer]>; selected?: string | null } {
  const set = option === OPT.SET_META_CONTEXT;
  const refuse = (type: number, message: string) => ({
    replies: [[type, Buffer.from(message)] as [number, Buffer]],
    ...(set ? { selected: null } : {}),
  });
  if (!structured)
    return refuse(REP.ERR_INVALID, 'metadata contexts need structured replies: send NBD_OPT_STRUCTURED_REPLY first');
  const req = metaRequest(data);
  if (typeof req === 'string') return refuse(REP.ERR_INVALID, req);
  if (req.queries.length > MAX_QUERIES) return refuse(REP.ERR_TOO_BIG, `more than ${MAX_QUERIES} queries`);
  const match =
    req.queries.some((q) => q === ALLOCATION || (!set && q === 'base:')) || (!set && req.queries.length === 0);
  const replies: Array<[number, Buffer]> = [];
  if (match) {
    const id = Buffer.alloc(4);
    id.writeUInt32BE(set ? ALLOCATION_CONTEXT_ID : 0, 0);
    replies.push([REP.META_CONTEXT, Buffer.concat([id, Buffer.from(ALLOCATION)])]);
  }
  replies.push([REP.ACK, Buffer.alloc(0)]);
  return set ? { replies, selected: match ? req.name : null } : { replies };
}
