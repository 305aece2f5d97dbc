/** The fuzzer's valid-looking messages: JSON it can write, the frame types, and a template of each message type serialized as the wire carries it. */
import { MESSAGE_TYPES, PROTOCOL_VERSION } from '../transport/messages.js';
import { Rng } from './fuzz-rng.js';

/** JSON text spliced in as is: deep nesting and tokens JSON.stringify cannot write (1e999). */
export class RawJson {
  constructor(readonly text: string) {}
}
export type Json = null | boolean | number | string | RawJson | Json[] | { [k: string]: Json };
export type JsonObject = { [k: string]: Json };

export function stringify(v: Json): string {
  if (v instanceof RawJson) return v.text;
  if (Array.isArray(v)) return `[${v.map(stringify).join(',')}]`;
  if (v !== null && typeof v === 'object')
    return `{${Object.entries(v)
      .map(([k, x]) => `${JSON.stringify(k)}:${stringify(x)}`)
      .join(',')}}`;
  return JSON.stringify(v);
}

export interface Frame {
  bytes: Buffer;
  /** A binary frame (header length, JSON header, bytes) or a text frame (JSON). */
  binary: boolean;
  kind: string;
}

/** The principal the fuzz sessions prove; anything else named in a frame is unproven there. */
export const PRINCIPAL = 'p';
export const REQUEST_TYPES = ['open', 'write', 'read', 'close', 'resume', 'prove', 'ping'] as const;
export const REPLY_TYPES = [
  'challenge',
  'welcome',
  'pong',
  'opened',
  'resumed',
  'written',
  'data',
  'closed',
  'error',
  'notice',
  'revoked',
] as const;
export const ALL_TYPES = [...MESSAGE_TYPES];
export const MiB = 1024 * 1024;
/** The replica's largest accepted frame (codec default) and what `ws` itself refuses beyond (twice that). */
export const MAX_FRAME = 2 * MiB;

export interface GenContext {
  rng: Rng;
  /** A fresh request id: a valid frame with an id the session saw already is dropped unanswered, by design. */
  nextId(): number;
  usedIds: Set<number>;
  /** The legitimate application's handle: fuzz frames name it too, and must not touch it. */
  legit: { target: string; requestId: string } | undefined;
  /** The largest deeply nested JSON drawn. */
  maxNestingBytes: number;
}

export const validName = (r: Rng) => r.pick(['default', 'admin', `q${r.int(1000)}`, r.str(1 + r.int(20), 'abcxyz019')]);
export const requestId = (r: Rng) => r.str(21 + r.int(44));

/** A valid-looking message of a type (its `data` apart), the starting point of most mutations. */
export function template(c: GenContext, type: string): { obj: JsonObject; data?: Buffer } {
  const r = c.rng;
  const legit = c.legit && r.chance(0.3) ? c.legit : undefined;
  const target = legit?.target ?? `t-${r.str(1 + r.int(12))}`;
  const rid = legit?.requestId ?? requestId(r);
  const id = c.nextId();
  const mode = r.pick(['read', 'write']);
  switch (type) {
    case 'hello':
      return { obj: { type, v: PROTOCOL_VERSION, node: validName(r), nonce: r.str(21) } };
    case 'auth':
      return { obj: { type, proof: r.str(43), principals: [{ name: PRINCIPAL, proof: r.str(43) }] } };
    case 'prove':
      return { obj: { type, principal: r.pick([PRINCIPAL, validName(r)]), proof: r.str(43) } };
    case 'ping':
      return { obj: { type, t: r.int(1e9) } };
    case 'open':
      return {
        obj: { type, id, target, requestId: rid, principal: r.pick([PRINCIPAL, 'default', validName(r)]), mode },
      };
    case 'resume':
      return {
        obj: {
          type,
          id,
          items: Array.from({ length: 1 + r.int(3) }, () => ({
            target,
            requestId: rid,
            principal: r.pick(['default', validName(r)]),
            mode,
            version: r.int(5),
          })),
        },
      };
    case 'write':
      return {
        obj: { type, id, target, requestId: rid, seq: 1 + r.int(100), offset: r.int(1 << 20) },
        data: r.bytes(r.size(1, 4096)),
      };
    case 'read':
    case 'extents':
      return { obj: { type, id, target, requestId: rid, offset: r.int(1 << 20), length: r.int(4097) } };
    case 'close':
      return { obj: { type, id, target, requestId: rid } };
    case 'challenge':
      return { obj: { type, replica: 'replica-1', nonce: r.str(21), proof: r.str(43) } };
    case 'welcome':
      return { obj: { type, session: r.str(21), replica: 'replica-1', heartbeatIntervalMs: 1000, available: true } };
    case 'pong':
      return { obj: { type, t: r.int(1e9) } };
    case 'opened':
      return { obj: { type, id, version: 0, lastSeq: 0 } };
    case 'resumed':
      return { obj: { type, id, results: [] } };
    case 'written':
      return { obj: { type, id, seq: 1, version: 1 } };
    case 'data':
      return { obj: { type, id, version: 1 }, data: r.bytes(r.int(64)) };
    case 'closed':
      return { obj: { type, id } };
    case 'error':
      return { obj: { type, id, code: 'BAD_FRAME', message: 'x', retryable: false } };
    case 'notice':
      return { obj: { type, kind: 'available' } };
    default:
      return { obj: { type, target, requestId: rid, reason: 'MODIFIED' } };
  }
}

/** Mostly requests (what a replica expects), sometimes any type. */
export const anyTemplate = (c: GenContext) =>
  template(c, c.rng.chance(0.7) ? c.rng.pick(REQUEST_TYPES) : c.rng.pick(ALL_TYPES));

export function binaryFrame(header: Buffer, data: Buffer = Buffer.alloc(0), headerLength = header.length): Buffer {
  const out = Buffer.allocUnsafe(4 + header.length + data.length);
  out.writeUInt32BE(headerLength >>> 0, 0);
  header.copy(out, 4);
  data.copy(out, 4 + header.length);
  return out;
}

/** As the wire carries it: a binary frame when there are bytes (or sometimes anyway), else JSON text. */
export function serialize(c: GenContext, t: { obj: JsonObject; data?: Buffer }, kind: string): Frame {
  const text = stringify(t.obj);
  if (t.data || c.rng.chance(0.3)) return { bytes: binaryFrame(Buffer.from(text), t.data), binary: true, kind };
  return { bytes: Buffer.from(text), binary: false, kind };
}

export const text = (s: string, kind: string): Frame => ({ bytes: Buffer.from(s), binary: false, kind });

export type Gen = (c: GenContext) => Frame;
