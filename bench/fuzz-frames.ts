/** The fuzzer's frames: a seeded PRNG, and mutators from a valid message down to bytes no decoder expects. */
import { decode } from '../transport/codec.js';
import { MAX_IO_BYTES, MESSAGE_TYPES, PROTOCOL_VERSION } from '../transport/messages.js';

// ---------------------------------------------------------------- seeded random

export class Rng {
  constructor(readonly next: () => number) {}
  /** Uniform in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    const v = xs[this.int(xs.length)];
    if (v === undefined) throw new Error('pick from an empty list');
    return v;
  }
  weighted<T>(table: ReadonlyArray<readonly [number, T]>): T {
    let x = this.next() * table.reduce((s, [w]) => s + w, 0);
    for (const [w, v] of table) if ((x -= w) < 0) return v;
    return this.pick(table)[1];
  }
  /** Log-uniform in [lo, hi]: small sizes often, huge ones sometimes. */
  size(lo: number, hi: number): number {
    return Math.floor(lo * Math.pow(hi / lo, this.next()));
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  str(n: number, alphabet = URL_SAFE): string {
    let s = '';
    for (let i = 0; i < n; i++) s += alphabet[this.int(alphabet.length)];
    return s;
  }
}

const URL_SAFE = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';
/** Derive one connection's seed from the run's, so a connection's frames depend on the seed and its index only. */
export const connectionSeed = (seed: number, index: number) => (seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;

// ---------------------------------------------------------------- frames

/** JSON text spliced in as is: deep nesting and tokens JSON.stringify cannot write (1e999). */
class RawJson {
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

/** A frame with the answer the replica owes it: `error:CODE` or a reply type. */
interface Planned extends Frame {
  expect: string;
}

/** The principal the fuzz sessions prove; anything else named in a frame is unproven there. */
export const PRINCIPAL = 'p';
const REQUEST_TYPES = ['open', 'write', 'read', 'close', 'resume', 'prove', 'ping'] as const;
const REPLY_TYPES = [
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
const ALL_TYPES = [...MESSAGE_TYPES];
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

const validName = (r: Rng) => r.pick(['default', 'admin', `q${r.int(1000)}`, r.str(1 + r.int(20), 'abcxyz019')]);
const requestId = (r: Rng) => r.str(21 + r.int(44));

/** A valid-looking message of a type (its `data` apart), the starting point of most mutations. */
function template(c: GenContext, type: string): { obj: JsonObject; data?: Buffer } {
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
const anyTemplate = (c: GenContext) =>
  template(c, c.rng.chance(0.7) ? c.rng.pick(REQUEST_TYPES) : c.rng.pick(ALL_TYPES));

function binaryFrame(header: Buffer, data: Buffer = Buffer.alloc(0), headerLength = header.length): Buffer {
  const out = Buffer.allocUnsafe(4 + header.length + data.length);
  out.writeUInt32BE(headerLength >>> 0, 0);
  header.copy(out, 4);
  data.copy(out, 4 + header.length);
  return out;
}

/** As the wire carries it: a binary frame when there are bytes (or sometimes anyway), else JSON text. */
function serialize(c: GenContext, t: { obj: JsonObject; data?: Buffer }, kind: string): Frame {
  const text = stringify(t.obj);
  if (t.data || c.rng.chance(0.3)) return { bytes: binaryFrame(Buffer.from(text), t.data), binary: true, kind };
  return { bytes: Buffer.from(text), binary: false, kind };
}

export const text = (s: string, kind: string): Frame => ({ bytes: Buffer.from(s), binary: false, kind });

/** Every [container, key] of an object, one level into arrays and objects (items[0].target, principals[0].proof). */
function fieldsOf(obj: JsonObject): Array<[JsonObject | Json[], string | number]> {
  const out: Array<[JsonObject | Json[], string | number]> = [];
  for (const [k, v] of Object.entries(obj)) {
    if (k === 'type') continue;
    out.push([obj, k]);
    if (Array.isArray(v)) {
      v.forEach((x, i) => {
        out.push([v, i]);
        if (x !== null && typeof x === 'object' && !Array.isArray(x) && !(x instanceof RawJson))
          for (const kk of Object.keys(x)) out.push([x, kk]);
      });
    }
  }
  return out;
}

function setField(c: GenContext, obj: JsonObject, value: Json, only?: (v: Json) => boolean): void {
  const fields = fieldsOf(obj).filter(([o, k]) => !only || only((o as Record<string | number, Json>)[k] ?? null));
  if (fields.length === 0) {
    obj[c.rng.pick(['id', 'target', 'requestId'])] = value;
    return;
  }
  const [o, k] = c.rng.pick(fields);
  (o as Record<string | number, Json>)[k] = value;
}

const WRONG_VALUES: Json[] = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  '',
  'x',
  [],
  {},
  [1],
  { a: 1 },
  new RawJson('1e999'),
  2 ** 53,
  -(2 ** 53),
  'null',
  '{}',
  '1',
];
const OUT_OF_RANGE: Json[] = [
  -1,
  -0.5,
  0.1,
  1.5,
  2 ** 53,
  2 ** 53 + 2,
  2 ** 64,
  1e308,
  -1e308,
  new RawJson('1e999'),
  new RawJson('-1e999'),
  MAX_IO_BYTES + 1,
  -(2 ** 31),
];
export const BAD_SHAPES: string[] = [
  '',
  ' ',
  'a b',
  '../../etc/passwd',
  'é'.repeat(30),
  '\u0000'.repeat(21),
  'x'.repeat(65),
  'x'.repeat(20),
  '-lead',
  '.dot',
  'x'.repeat(129),
  '\ud800\ud800',
  'a\nb',
  '<script>',
  '%00%00%00%00%00%00%00%00',
  '${jndi:ldap://x}',
  'p ',
  ' p',
  'P',
];
const UNKNOWN_TYPES: string[] = [
  'OPEN',
  'Open',
  'open ',
  ' open',
  '',
  'constructor',
  '__proto__',
  'toString',
  'hasOwnProperty',
  'valueOf',
  'writes',
  'error\u0000',
  'ωrite',
  'x'.repeat(10_000),
];

/**
 * Nested arrays or objects, up to `maxNestingBytes` of JSON. The default (200 KB) costs the replica
 * milliseconds; up to the frame limit (--heavy) each costs it about a second (docs/fuzz.md).
 */
function deep(c: GenContext): RawJson {
  const bytes = c.rng.size(128, c.maxNestingBytes);
  if (c.rng.chance(0.5)) return new RawJson('['.repeat(bytes >> 1) + ']'.repeat(bytes >> 1));
  const depth = Math.floor(bytes / 6);
  return new RawJson('{"a":'.repeat(depth) + '1' + '}'.repeat(depth));
}

function flipBits(c: GenContext, b: Buffer): Buffer {
  const out = Buffer.from(b);
  if (out.length === 0) return out;
  for (let k = 1 + c.rng.int(8); k > 0; k--) {
    const i = c.rng.int(out.length);
    out[i] = (out[i] ?? 0) ^ (1 << c.rng.int(8));
  }
  return out;
}

/** A text frame stays valid UTF-8 (ws would close the connection with 1007 otherwise: a pre-authentication case of its own). */
const utf8 = (b: Buffer) => Buffer.from(b.toString('utf8'));

type Gen = (c: GenContext) => Frame;

/** Frames the codec must refuse (BAD_FRAME, UNKNOWN_TYPE, FRAME_TOO_LARGE). */
export const DECODE_LEVEL: ReadonlyArray<readonly [number, Gen]> = [
  [
    8,
    (c) => {
      const t = anyTemplate(c);
      setField(c, t.obj, c.rng.pick(WRONG_VALUES));
      return serialize(c, t, 'wrong-type');
    },
  ],
  [
    8,
    (c) => {
      const t = anyTemplate(c);
      const ks = Object.keys(t.obj).filter((k) => k !== 'type');
      if (ks.length) delete t.obj[c.rng.pick(ks)];
      else delete t.obj.type;
      return serialize(c, t, 'missing-field');
    },
  ],
  [
    6,
    (c) => {
      const t = anyTemplate(c);
      setField(c, t.obj, c.rng.pick(OUT_OF_RANGE), (v) => typeof v === 'number');
      return serialize(c, t, 'out-of-range');
    },
  ],
  [
    8,
    (c) => {
      const t = anyTemplate(c);
      setField(c, t.obj, c.rng.pick(BAD_SHAPES), (v) => typeof v === 'string');
      return serialize(c, t, 'bad-shape');
    },
  ],
  [
    1,
    (c) => {
      const t = anyTemplate(c);
      setField(c, t.obj, 'A'.repeat(c.rng.size(1025, 512 * 1024)), (v) => typeof v === 'string');
      return serialize(c, t, 'huge-string');
    },
  ],
  [
    4,
    (c) => {
      const t = anyTemplate(c);
      const which = c.rng.int(4);
      if (which === 0) t.obj.data = c.rng.pick([[1, 2, 3], 'AAAA', { type: 'Buffer', data: [1] }]);
      else if (which === 1) t.obj[`x${c.rng.int(100)}`] = c.rng.pick(WRONG_VALUES);
      else if (which === 2) t.obj[String('constructor')] = { prototype: { admin: true } };
      else {
        // JSON.parse makes "__proto__" an own key; it must not reach any object's prototype.
        const f = serialize(c, t, 'extra-field');
        const s = f.binary ? f.bytes.subarray(4).toString() : f.bytes.toString();
        return text(s.replace(/^\{/, '{"__proto__":{"admin":true,"type":"ping"},'), 'extra-field');
      }
      return serialize(c, t, 'extra-field');
    },
  ],
  [
    1,
    (c) => {
      if (c.rng.chance(0.3)) return text(deep(c).text, 'deep-nesting');
      const t = anyTemplate(c);
      if (c.rng.chance(0.5)) setField(c, t.obj, deep(c));
      else t.obj.extra = deep(c);
      return serialize(c, t, 'deep-nesting');
    },
  ],
  [
    5,
    (c) => {
      const t = anyTemplate(c);
      t.obj.type = c.rng.chance(0.8) ? c.rng.pick(UNKNOWN_TYPES) : c.rng.str(1 + c.rng.int(30));
      return serialize(c, t, 'unknown-type');
    },
  ],
  [
    5,
    (c) => {
      const t = anyTemplate(c);
      t.obj.type = c.rng.pick(ALL_TYPES);
      return serialize(c, t, 'type-swap');
    },
  ],
  [
    3,
    (c) => {
      const t = template(c, c.rng.pick(['open', 'write', 'read', 'close', 'resume']));
      t.obj.id = c.rng.pick<Json>([-1, 1.5, '1', null, 2 ** 53, [], {}, new RawJson('1e999')]);
      return serialize(c, t, 'wrong-id');
    },
  ],
  [
    1,
    (c) => {
      const t = template(c, 'resume');
      const item = { target: 't', requestId: requestId(c.rng), principal: 'q', mode: 'read' };
      t.obj.items = c.rng.chance(0.9) ? [] : Array.from({ length: 10_001 }, () => item);
      return serialize(c, t, 'resume-bounds');
    },
  ],
  [
    6,
    (c) => {
      const f = serialize(c, anyTemplate(c), 'truncate');
      const b = f.bytes.subarray(0, c.rng.int(f.bytes.length));
      return { ...f, bytes: f.binary ? Buffer.from(b) : utf8(b) };
    },
  ],
  [
    8,
    (c) => {
      const f = serialize(c, anyTemplate(c), 'bit-flip');
      const b = flipBits(c, f.bytes);
      return { ...f, bytes: f.binary ? b : utf8(b) };
    },
  ],
  [
    5,
    (c) => {
      const t = anyTemplate(c);
      const header = Buffer.from(stringify(t.obj));
      const lie = c.rng.pick([
        0,
        0xffffffff,
        256 * 1024 + 1 + c.rng.int(1000),
        header.length + 1 + c.rng.int(100),
        Math.max(0, header.length - 1 - c.rng.int(header.length)),
      ]);
      return { bytes: binaryFrame(header, t.data, lie), binary: true, kind: 'lying-length' };
    },
  ],
  [1, (c) => ({ bytes: c.rng.bytes(c.rng.int(4)), binary: true, kind: 'short-binary' })],
  [
    2,
    (c) => {
      const t = template(c, c.rng.pick(['open', 'read', 'close', 'ping', 'prove']));
      return {
        bytes: binaryFrame(Buffer.from(stringify(t.obj)), c.rng.bytes(1 + c.rng.int(100))),
        binary: true,
        kind: 'bytes-on-non-write',
      };
    },
  ],
  [
    0.05,
    (c) => {
      const t = template(c, 'write');
      return {
        bytes: binaryFrame(Buffer.from(stringify(t.obj)), Buffer.alloc(MAX_IO_BYTES + 1 + c.rng.int(4096), 7)),
        binary: true,
        kind: 'write-too-big',
      };
    },
  ],
  [4, (c) => ({ bytes: c.rng.bytes(c.rng.size(1, 4096)), binary: true, kind: 'random-bytes' })],
  [
    3,
    (c) =>
      text(c.rng.str(c.rng.size(1, 2048), '{}[]":,0123456789abcdefnulltrue \\\u00e9\u4e2d\ud83d\ude00'), 'random-text'),
  ],
  [
    2,
    (c) =>
      text(
        c.rng.pick(['1', '"x"', 'null', 'true', '[]', '[1,2]', '1e999', '-0', '""', '[{"type":"ping","t":1}]']),
        'json-non-object',
      ),
  ],
  [
    5,
    (c) => {
      const s = stringify(anyTemplate(c).obj);
      const broken = c.rng.pick([
        s.slice(0, -1),
        s.replace(/\}$/, ',}'),
        s.replace('"', "'"),
        s.replace(/:(\d+)/, ':NaN'),
        s.replace('{', '{/*c*/'),
        s.replace(/"(\w+)":/, '$1:'),
        `\ufeff${s}`,
        `${s}x`,
        `${s}${s}`,
        s.replace(/"([^"]*)"$/, '"\u0001"'),
        s.replace(/:"/, ':"\\x41'),
      ]);
      return text(broken, 'invalid-json');
    },
  ],
  [
    2,
    (c) => {
      const t = anyTemplate(c);
      if (c.rng.chance(0.5)) delete t.obj.type;
      else t.obj.type = c.rng.pick<Json>([5, null, [], {}, true]);
      return serialize(c, t, 'no-type');
    },
  ],
  [
    0.05,
    (c) => {
      const pad = MAX_FRAME + c.rng.int(MiB);
      if (c.rng.chance(0.5)) return text(`{"type":"ping","t":1,"pad":"${'x'.repeat(pad)}"}`, 'oversized');
      return {
        bytes: binaryFrame(Buffer.from(stringify(template(c, 'write').obj)), Buffer.alloc(pad, 1)),
        binary: true,
        kind: 'oversized',
      };
    },
  ],
];

/** Frames the codec accepts but a replica must refuse on this session (NOT_OPEN, FORBIDDEN, AUTH_FAILED, BAD_FRAME). */
const SEMANTIC: ReadonlyArray<readonly [number, Gen]> = [
  [10, (c) => serialize(c, template(c, c.rng.pick(['write', 'read', 'close'])), 'not-open-io')],
  [
    4,
    (c) => {
      const t = template(c, 'open');
      t.obj.principal = validName(c.rng);
      return serialize(c, t, 'unproven-open');
    },
  ],
  [2, (c) => serialize(c, template(c, 'resume'), 'unproven-resume')],
  [6, (c) => serialize(c, template(c, c.rng.pick(REPLY_TYPES)), 'reply-type')],
  [2, (c) => serialize(c, template(c, c.rng.pick(['hello', 'auth'])), 'handshake-again')],
  [2, (c) => serialize(c, template(c, 'prove'), 'wrong-prove')],
];

export const MIXED = [...DECODE_LEVEL, ...SEMANTIC];

/**
 * The answer the replica owes a frame on an authenticated session, or undefined if the frame is one
 * it may legitimately accept (a ping, an open by the proven principal, a repeated id): such a
 * candidate is drawn again, so every frame sent is malformed or refused.
 */
function predict(f: Frame, c: GenContext): string | undefined {
  const d = decode(f.binary ? f.bytes : f.bytes.toString('utf8'));
  if (!d.ok) return `error:${d.code}`;
  const m = d.msg;
  if ('id' in m && m.id !== undefined && m.type !== 'error') {
    if (c.usedIds.has(m.id)) return undefined;
    c.usedIds.add(m.id);
  }
  switch (m.type) {
    case 'ping':
      return undefined;
    case 'prove':
      return 'error:AUTH_FAILED';
    case 'open':
      return m.principal === PRINCIPAL ? undefined : 'error:FORBIDDEN';
    case 'resume':
      return m.items.some((it) => it.principal === PRINCIPAL) ? undefined : 'resumed';
    case 'write':
    case 'read':
    case 'close':
      return 'error:NOT_OPEN';
    default:
      return 'error:BAD_FRAME';
  }
}

/** A text frame as the binary frame with the same header: a sealed session carries binary frames only. */
export const asBinary = (f: Frame): Frame =>
  f.binary ? f : { bytes: binaryFrame(f.bytes), binary: true, kind: f.kind };

export function nextFrame(c: GenContext, table: ReadonlyArray<readonly [number, Gen]>, binaryOnly = false): Planned {
  for (let attempt = 0; attempt < 16; attempt++) {
    const drawn = c.rng.weighted(table)(c);
    const f = binaryOnly ? asBinary(drawn) : drawn;
    const expect = predict(f, c);
    if (expect) return { ...f, expect };
  }
  const f = text('{', 'invalid-json');
  return { ...(binaryOnly ? asBinary(f) : f), expect: 'error:BAD_FRAME' };
}

/** A frame in a finding: its text, or its length and first bytes in hex. */
export function preview(f: Frame): string {
  if (!f.binary) return JSON.stringify(f.bytes.toString('utf8').slice(0, 160));
  return `binary ${f.bytes.length} bytes ${f.bytes.subarray(0, 48).toString('hex')}${f.bytes.length > 48 ? '…' : ''}`;
}

/** Garbage instead of a hello: anything but a valid hello. */
export function junkFrame(c: GenContext): Frame {
  for (let attempt = 0; attempt < 16; attempt++) {
    const f = c.rng.weighted(MIXED)(c);
    const d = decode(f.binary ? f.bytes : f.bytes.toString('utf8'));
    if (!d.ok || d.msg.type !== 'hello') return f;
  }
  return text('{', 'invalid-json');
}
