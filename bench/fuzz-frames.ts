/**
 * The fuzzer's frames: the draw of each (the decode-level mutators of fuzz-mutations.ts, and frames the
 * codec accepts but a session must refuse), the answer the replica owes it, and how a finding shows it.
 */
import { decode } from '../transport/codec.js';
import {
  Frame,
  GenContext,
  Gen,
  PRINCIPAL,
  REPLY_TYPES,
  binaryFrame,
  serialize,
  template,
  text,
  validName,
} from './fuzz-templates.js';
import { DECODE_LEVEL } from './fuzz-mutations.js';

export { Rng, connectionSeed } from './fuzz-rng.js';
export {
  MAX_FRAME,
  MiB,
  PRINCIPAL,
  stringify,
  text,
  type Frame,
  type GenContext,
  type Json,
  type JsonObject,
} from './fuzz-templates.js';
export { BAD_SHAPES, DECODE_LEVEL } from './fuzz-mutations.js';

/** A frame with the answer the replica owes it: `error:CODE` or a reply type. */
interface Planned extends Frame {
  expect: string;
}

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
    case 'extents':
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
