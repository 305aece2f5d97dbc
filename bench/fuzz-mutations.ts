/** The fuzzer's decode-level mutators: from a valid message down to bytes no decoder expects (the frames the codec must refuse). */
import { MAX_IO_BYTES } from '../transport/messages.js';
import {
  GenContext,
  Gen,
  Json,
  JsonObject,
  MAX_FRAME,
  MiB,
  RawJson,
  ALL_TYPES,
  anyTemplate,
  binaryFrame,
  requestId,
  serialize,
  stringify,
  template,
  text,
} from './fuzz-templates.js';

/** Every [container, key] of an object, one level into arrays and objects (items[0].target, principals[0].proof). */
export function fieldsOf(obj: JsonObject): Array<[JsonObject | Json[], string | number]> {
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

export function setField(c: GenContext, obj: JsonObject, value: Json, only?: (v: Json) => boolean): void {
  const fields = fieldsOf(obj).filter(([o, k]) => !only || only((o as Record<string | number, Json>)[k] ?? null));
  if (fields.length === 0) {
    obj[c.rng.pick(['id', 'target', 'requestId'])] = value;
    return;
  }
  const [o, k] = c.rng.pick(fields);
  (o as Record<string | number, Json>)[k] = value;
}

export const WRONG_VALUES: Json[] = [
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
export const OUT_OF_RANGE: Json[] = [
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
export const UNKNOWN_TYPES: string[] = [
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
export function deep(c: GenContext): RawJson {
  const bytes = c.rng.size(128, c.maxNestingBytes);
  if (c.rng.chance(0.5)) return new RawJson('['.repeat(bytes >> 1) + ']'.repeat(bytes >> 1));
  const depth = Math.floor(bytes / 6);
  return new RawJson('{"a":'.repeat(depth) + '1' + '}'.repeat(depth));
}

export function flipBits(c: GenContext, b: Buffer): Buffer {
  const out = Buffer.from(b);
  if (out.length === 0) return out;
  for (let k = 1 + c.rng.int(8); k > 0; k--) {
    const i = c.rng.int(out.length);
    out[i] = (out[i] ?? 0) ^ (1 << c.rng.int(8));
  }
  return out;
}

/** A text frame stays valid UTF-8 (ws would close the connection with 1007 otherwise: a pre-authentication case of its own). */
export const utf8 = (b: Buffer) => Buffer.from(b.toString('utf8'));

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
