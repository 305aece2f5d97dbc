/**
 * The fuzzer: malformed frames against a live replica process while a legitimate application keeps
 * writing and reading through it (SPEC "Bad input and trust": a bad frame gets a clear error and
 * never crashes a process or loses state).
 *
 *   node dist/bench/fuzz.js [--frames N] [--connections N] [--concurrency N] [--seed N] [--json]
 *
 * What it sends and what it reports: docs/fuzz.md. It runs from dist with production dependencies
 * only, so frames come from its own mutators driven by the project's seeded PRNG (one seed per run,
 * one derived seed per connection).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket, type RawData } from 'ws';
import { z } from 'zod';
import { Application, type Handle } from '../actors/application.js';
import { credentialKey, issueCredential, proofs, transcript } from '../actors/auth.js';
import { seededIds, seededRandom } from '../actors/env.js';
import { answerChallenge, bareLogin, helloFrame } from '../actors/handshake.js';
import { NodeAgent } from '../actors/node-agent.js';
import { ChildReport } from '../cluster/ipc.js';
import { freePort } from '../transport/ports.js';
import { decode, encode, type Decoded } from '../transport/codec.js';
import { FrameMac, MAC_BYTES } from '../transport/frame-mac.js';
import { MAX_IO_BYTES, MESSAGE_TYPES, PROTOCOL_VERSION, type Message, type MessageOf } from '../transport/messages.js';
import { CLOSE } from '../transport/types.js';
import { WebSocketTransport } from '../transport/ws.js';

// ---------------------------------------------------------------- options and report

export interface FuzzOptions {
  /** Fuzz frames to send in all (default 100,000). */
  frames?: number;
  /** Fuzz connections to open (default 1,000); a few more are opened if early closes left frames unsent. */
  connections?: number;
  /** Connections open at a time (default 50). */
  concurrency?: number;
  /** Seed of every drawn frame (default: drawn, and reported). */
  seed?: number;
  /** The run stops by itself at this point (default 10 minutes). */
  deadlineMs?: number;
  /** How long a wave of post-authentication frames may wait for its answers (default 10 s). */
  answerTimeoutMs?: number;
  /** Quiet time after the fuzz, before the replica's memory is read again (default 1 s). */
  settleMs?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /** Self-test of the fuzzer: SIGKILL the replica once this many frames are sent; the report must say crash. */
  killReplicaAtFrame?: number;
  /** Stop early (Ctrl-C on the command line): the run cleans up and reports what it saw, marked interrupted. */
  signal?: AbortSignal;
  /**
   * Deeply nested JSON up to the frame limit (2 MiB) instead of 200 KB. Off by default: each such
   * frame stalls the replica for about a second (docs/fuzz.md, "Known finding").
   */
  heavy?: boolean;
}

export interface FuzzReport {
  /** Whether every check passed (`failures(report)` lists those that did not). */
  ok: boolean;
  seed: number;
  heavy: boolean;
  durationMs: number;
  timedOut: boolean;
  interrupted: boolean;
  /** Frames sent to the replica, before and after authentication. */
  framesSent: number;
  preAuthFrames: number;
  postAuthFrames: number;
  /** Connections opened (attempted), pre-authentication ones, authenticated sessions. */
  connections: number;
  preAuthConnections: number;
  sessions: number;
  concurrency: number;
  /** Connections the replica refused for a limit (an HTTP refusal, or a close/error before welcome that is not AUTH_FAILED). */
  refusedByLimit: number;
  /** Error frames received, by code (pre- and post-authentication). */
  errorsByCode: Record<string, number>;
  /** Other answers received (challenge, resumed). */
  otherAnswers: Record<string, number>;
  /** Connections the replica closed, by close code (4001 auth failed, 4002 too many bad frames, 1007 bad UTF-8, 1009 too big, ...). */
  closedByReplica: Record<string, number>;
  /** Post-authentication frames answered (an error frame or the predicted reply). */
  answered: number;
  /** Post-authentication frames sent around the replica's close of a session (4002 after too many bad frames, or a limit). */
  absorbedByClose: number;
  /** Post-authentication frames with no answer on a session the replica did not close with a code: must be 0. */
  unanswered: number;
  /** Answers whose code or type was not the one predicted for the frames sent: must be 0. */
  unpredictedAnswers: number;
  /** Pre-authentication garbage neither refused nor closed by the replica within 3 s: must be 0. */
  preAuthUnrefused: number;
  /** Sessions that asked for sealed frames (every frame then carries a MAC under the session key). */
  sealedSessions: number;
  /** Frames with a broken seal (a wrong MAC, a replayed frame, no MAC, a text frame) sent on sealed sessions. */
  brokenSeals: number;
  /** Sealed sessions the replica kept for 3 s after a broken seal: must be 0 (it drops them). */
  brokenSealsKept: number;
  /** Sessions the fuzzer could not authenticate though no limit refused them: must be 0. */
  handshakeFailures: number;
  /** Frames from the replica that did not pass the codec: must be 0. */
  invalidReplies: number;
  /** The replica process exited during the run: must be 0. */
  crashes: number;
  crash: string | undefined;
  /** A fresh session authenticated and got its pong after the fuzz. */
  aliveAtEnd: boolean;
  aliveDetail: string;
  legit: {
    /** Writes and reads (4 KiB each, bytes verified) that succeeded. */
    ops: number;
    failures: number;
    errors: string[];
    p99Ms: number;
    maxMs: number;
  };
  replica: {
    rssBeforeMiB: number | null;
    rssPeakMiB: number | null;
    rssAfterMiB: number | null;
    /** From the replica's own status report: bad frames it counted, sessions it opened. */
    badFramesCounted: number | null;
    sessionsOpened: number | null;
    /** Lines at level error or fatal in its log. */
    logErrors: number;
  };
  framesByKind: Record<string, number>;
  preAuthScenarios: Record<string, number>;
  /** What went wrong, in words (the first 30). */
  findings: string[];
}

// ---------------------------------------------------------------- seeded random

class Rng {
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
const connectionSeed = (seed: number, index: number) => (seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;

// ---------------------------------------------------------------- frames

/** JSON text spliced in as is: deep nesting and tokens JSON.stringify cannot write (1e999). */
class RawJson {
  constructor(readonly text: string) {}
}
type Json = null | boolean | number | string | RawJson | Json[] | { [k: string]: Json };
type JsonObject = { [k: string]: Json };

function stringify(v: Json): string {
  if (v instanceof RawJson) return v.text;
  if (Array.isArray(v)) return `[${v.map(stringify).join(',')}]`;
  if (v !== null && typeof v === 'object') return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}:${stringify(x)}`).join(',')}}`;
  return JSON.stringify(v);
}

interface Frame {
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
const PRINCIPAL = 'p';
const REQUEST_TYPES = ['open', 'write', 'read', 'close', 'resume', 'prove', 'ping'] as const;
const REPLY_TYPES = ['challenge', 'welcome', 'pong', 'opened', 'resumed', 'written', 'data', 'closed', 'error', 'notice', 'revoked'] as const;
const ALL_TYPES = [...MESSAGE_TYPES];
const MiB = 1024 * 1024;
/** The replica's largest accepted frame (codec default) and what `ws` itself refuses beyond (twice that). */
const MAX_FRAME = 2 * MiB;

interface GenContext {
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
    case 'hello': return { obj: { type, v: PROTOCOL_VERSION, node: validName(r), nonce: r.str(21) } };
    case 'auth': return { obj: { type, proof: r.str(43), principals: [{ name: PRINCIPAL, proof: r.str(43) }] } };
    case 'prove': return { obj: { type, principal: r.pick([PRINCIPAL, validName(r)]), proof: r.str(43) } };
    case 'ping': return { obj: { type, t: r.int(1e9) } };
    case 'open': return { obj: { type, id, target, requestId: rid, principal: r.pick([PRINCIPAL, 'default', validName(r)]), mode } };
    case 'resume': return { obj: { type, id, items: Array.from({ length: 1 + r.int(3) }, () => ({ target, requestId: rid, principal: r.pick(['default', validName(r)]), mode, version: r.int(5) })) } };
    case 'write': return { obj: { type, id, target, requestId: rid, seq: 1 + r.int(100), offset: r.int(1 << 20) }, data: r.bytes(r.size(1, 4096)) };
    case 'read': return { obj: { type, id, target, requestId: rid, offset: r.int(1 << 20), length: r.int(4097) } };
    case 'close': return { obj: { type, id, target, requestId: rid } };
    case 'challenge': return { obj: { type, replica: 'replica-1', nonce: r.str(21), proof: r.str(43) } };
    case 'welcome': return { obj: { type, session: r.str(21), replica: 'replica-1', heartbeatIntervalMs: 1000, available: true } };
    case 'pong': return { obj: { type, t: r.int(1e9) } };
    case 'opened': return { obj: { type, id, version: 0, lastSeq: 0 } };
    case 'resumed': return { obj: { type, id, results: [] } };
    case 'written': return { obj: { type, id, seq: 1, version: 1 } };
    case 'data': return { obj: { type, id, version: 1 }, data: r.bytes(r.int(64)) };
    case 'closed': return { obj: { type, id } };
    case 'error': return { obj: { type, id, code: 'BAD_FRAME', message: 'x', retryable: false } };
    case 'notice': return { obj: { type, kind: 'available' } };
    default: return { obj: { type, target, requestId: rid, reason: 'MODIFIED' } };
  }
}

/** Mostly requests (what a replica expects), sometimes any type. */
const anyTemplate = (c: GenContext) => template(c, c.rng.chance(0.7) ? c.rng.pick(REQUEST_TYPES) : c.rng.pick(ALL_TYPES));

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

const text = (s: string, kind: string): Frame => ({ bytes: Buffer.from(s), binary: false, kind });

/** Every [container, key] of an object, one level into arrays and objects (items[0].target, principals[0].proof). */
function fieldsOf(obj: JsonObject): Array<[JsonObject | Json[], string | number]> {
  const out: Array<[JsonObject | Json[], string | number]> = [];
  for (const [k, v] of Object.entries(obj)) {
    if (k === 'type') continue;
    out.push([obj, k]);
    if (Array.isArray(v)) {
      v.forEach((x, i) => {
        out.push([v, i]);
        if (x !== null && typeof x === 'object' && !Array.isArray(x) && !(x instanceof RawJson)) for (const kk of Object.keys(x)) out.push([x, kk]);
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

const WRONG_VALUES: Json[] = [null, true, false, 0, -1, 1.5, '', 'x', [], {}, [1], { a: 1 }, new RawJson('1e999'), 2 ** 53, -(2 ** 53), 'null', '{}', '1'];
const OUT_OF_RANGE: Json[] = [-1, -0.5, 0.1, 1.5, 2 ** 53, 2 ** 53 + 2, 2 ** 64, 1e308, -1e308, new RawJson('1e999'), new RawJson('-1e999'), MAX_IO_BYTES + 1, -(2 ** 31)];
const BAD_SHAPES: string[] = ['', ' ', 'a b', '../../etc/passwd', 'é'.repeat(30), '\u0000'.repeat(21), 'x'.repeat(65), 'x'.repeat(20), '-lead', '.dot', 'x'.repeat(129), '\ud800\ud800', 'a\nb', '<script>', '%00%00%00%00%00%00%00%00', '${jndi:ldap://x}', 'p ', ' p', 'P'];
const UNKNOWN_TYPES: string[] = ['OPEN', 'Open', 'open ', ' open', '', 'constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', 'writes', 'error\u0000', 'ωrite', 'x'.repeat(10_000)];

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
const DECODE_LEVEL: ReadonlyArray<readonly [number, Gen]> = [
  [8, (c) => { const t = anyTemplate(c); setField(c, t.obj, c.rng.pick(WRONG_VALUES)); return serialize(c, t, 'wrong-type'); }],
  [8, (c) => { const t = anyTemplate(c); const ks = Object.keys(t.obj).filter((k) => k !== 'type'); if (ks.length) delete t.obj[c.rng.pick(ks)]; else delete t.obj.type; return serialize(c, t, 'missing-field'); }],
  [6, (c) => { const t = anyTemplate(c); setField(c, t.obj, c.rng.pick(OUT_OF_RANGE), (v) => typeof v === 'number'); return serialize(c, t, 'out-of-range'); }],
  [8, (c) => { const t = anyTemplate(c); setField(c, t.obj, c.rng.pick(BAD_SHAPES), (v) => typeof v === 'string'); return serialize(c, t, 'bad-shape'); }],
  [1, (c) => { const t = anyTemplate(c); setField(c, t.obj, 'A'.repeat(c.rng.size(1025, 512 * 1024)), (v) => typeof v === 'string'); return serialize(c, t, 'huge-string'); }],
  [4, (c) => {
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
  }],
  [1, (c) => {
    if (c.rng.chance(0.3)) return text(deep(c).text, 'deep-nesting');
    const t = anyTemplate(c);
    if (c.rng.chance(0.5)) setField(c, t.obj, deep(c));
    else t.obj.extra = deep(c);
    return serialize(c, t, 'deep-nesting');
  }],
  [5, (c) => { const t = anyTemplate(c); t.obj.type = c.rng.chance(0.8) ? c.rng.pick(UNKNOWN_TYPES) : c.rng.str(1 + c.rng.int(30)); return serialize(c, t, 'unknown-type'); }],
  [5, (c) => { const t = anyTemplate(c); t.obj.type = c.rng.pick(ALL_TYPES); return serialize(c, t, 'type-swap'); }],
  [3, (c) => { const t = template(c, c.rng.pick(['open', 'write', 'read', 'close', 'resume'])); t.obj.id = c.rng.pick<Json>([-1, 1.5, '1', null, 2 ** 53, [], {}, new RawJson('1e999')]); return serialize(c, t, 'wrong-id'); }],
  [1, (c) => {
    const t = template(c, 'resume');
    const item = { target: 't', requestId: requestId(c.rng), principal: 'q', mode: 'read' };
    t.obj.items = c.rng.chance(0.9) ? [] : Array.from({ length: 10_001 }, () => item);
    return serialize(c, t, 'resume-bounds');
  }],
  [6, (c) => { const f = serialize(c, anyTemplate(c), 'truncate'); const b = f.bytes.subarray(0, c.rng.int(f.bytes.length)); return { ...f, bytes: f.binary ? Buffer.from(b) : utf8(b) }; }],
  [8, (c) => { const f = serialize(c, anyTemplate(c), 'bit-flip'); const b = flipBits(c, f.bytes); return { ...f, bytes: f.binary ? b : utf8(b) }; }],
  [5, (c) => {
    const t = anyTemplate(c);
    const header = Buffer.from(stringify(t.obj));
    const lie = c.rng.pick([0, 0xffffffff, 256 * 1024 + 1 + c.rng.int(1000), header.length + 1 + c.rng.int(100), Math.max(0, header.length - 1 - c.rng.int(header.length))]);
    return { bytes: binaryFrame(header, t.data, lie), binary: true, kind: 'lying-length' };
  }],
  [1, (c) => ({ bytes: c.rng.bytes(c.rng.int(4)), binary: true, kind: 'short-binary' })],
  [2, (c) => { const t = template(c, c.rng.pick(['open', 'read', 'close', 'ping', 'prove'])); return { bytes: binaryFrame(Buffer.from(stringify(t.obj)), c.rng.bytes(1 + c.rng.int(100))), binary: true, kind: 'bytes-on-non-write' }; }],
  [0.05, (c) => { const t = template(c, 'write'); return { bytes: binaryFrame(Buffer.from(stringify(t.obj)), Buffer.alloc(MAX_IO_BYTES + 1 + c.rng.int(4096), 7)), binary: true, kind: 'write-too-big' }; }],
  [4, (c) => ({ bytes: c.rng.bytes(c.rng.size(1, 4096)), binary: true, kind: 'random-bytes' })],
  [3, (c) => text(c.rng.str(c.rng.size(1, 2048), '{}[]":,0123456789abcdefnulltrue \\\u00e9\u4e2d\ud83d\ude00'), 'random-text')],
  [2, (c) => text(c.rng.pick(['1', '"x"', 'null', 'true', '[]', '[1,2]', '1e999', '-0', '""', '[{"type":"ping","t":1}]']), 'json-non-object')],
  [5, (c) => {
    const s = stringify(anyTemplate(c).obj);
    const broken = c.rng.pick([
      s.slice(0, -1), s.replace(/\}$/, ',}'), s.replace('"', "'"), s.replace(/:(\d+)/, ':NaN'), s.replace('{', '{/*c*/'),
      s.replace(/"(\w+)":/, '$1:'), `\ufeff${s}`, `${s}x`, `${s}${s}`, s.replace(/"([^"]*)"$/, '"\u0001"'), s.replace(/:"/, ':"\\x41'),
    ]);
    return text(broken, 'invalid-json');
  }],
  [2, (c) => { const t = anyTemplate(c); if (c.rng.chance(0.5)) delete t.obj.type; else t.obj.type = c.rng.pick<Json>([5, null, [], {}, true]); return serialize(c, t, 'no-type'); }],
  [0.05, (c) => {
    const pad = MAX_FRAME + c.rng.int(MiB);
    if (c.rng.chance(0.5)) return text(`{"type":"ping","t":1,"pad":"${'x'.repeat(pad)}"}`, 'oversized');
    return { bytes: binaryFrame(Buffer.from(stringify(template(c, 'write').obj)), Buffer.alloc(pad, 1)), binary: true, kind: 'oversized' };
  }],
];

/** Frames the codec accepts but a replica must refuse on this session (NOT_OPEN, FORBIDDEN, AUTH_FAILED, BAD_FRAME). */
const SEMANTIC: ReadonlyArray<readonly [number, Gen]> = [
  [10, (c) => serialize(c, template(c, c.rng.pick(['write', 'read', 'close'])), 'not-open-io')],
  [4, (c) => { const t = template(c, 'open'); t.obj.principal = validName(c.rng); return serialize(c, t, 'unproven-open'); }],
  [2, (c) => serialize(c, template(c, 'resume'), 'unproven-resume')],
  [6, (c) => serialize(c, template(c, c.rng.pick(REPLY_TYPES)), 'reply-type')],
  [2, (c) => serialize(c, template(c, c.rng.pick(['hello', 'auth'])), 'handshake-again')],
  [2, (c) => serialize(c, template(c, 'prove'), 'wrong-prove')],
];

const MIXED = [...DECODE_LEVEL, ...SEMANTIC];

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
    case 'ping': return undefined;
    case 'prove': return 'error:AUTH_FAILED';
    case 'open': return m.principal === PRINCIPAL ? undefined : 'error:FORBIDDEN';
    case 'resume': return m.items.some((it) => it.principal === PRINCIPAL) ? undefined : 'resumed';
    case 'write': case 'read': case 'close': return 'error:NOT_OPEN';
    default: return 'error:BAD_FRAME';
  }
}

/** A text frame as the binary frame with the same header: a sealed session carries binary frames only. */
const asBinary = (f: Frame): Frame => (f.binary ? f : { bytes: binaryFrame(f.bytes), binary: true, kind: f.kind });

function nextFrame(c: GenContext, table: ReadonlyArray<readonly [number, Gen]>, binaryOnly = false): Planned {
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
function preview(f: Frame): string {
  if (!f.binary) return JSON.stringify(f.bytes.toString('utf8').slice(0, 160));
  return `binary ${f.bytes.length} bytes ${f.bytes.subarray(0, 48).toString('hex')}${f.bytes.length > 48 ? '…' : ''}`;
}

/** Garbage instead of a hello: anything but a valid hello. */
function junkFrame(c: GenContext): Frame {
  for (let attempt = 0; attempt < 16; attempt++) {
    const f = c.rng.weighted(MIXED)(c);
    const d = decode(f.binary ? f.bytes : f.bytes.toString('utf8'));
    if (!d.ok || d.msg.type !== 'hello') return f;
  }
  return text('{', 'invalid-json');
}

// ---------------------------------------------------------------- a raw client connection

const toBuffer = (data: RawData): Buffer => (Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data));

type BrokenSeal = 'flipped-mac' | 'replayed' | 'unsealed' | 'text';

/** A bare `ws` client: frames out as given (sealed, once protected), replies decoded by the project's codec. */
class RawConn {
  closed = false;
  closeCode = 0;
  /** We closed or dropped it (so a close code is not the replica's word). */
  byUs = false;
  onMessage: (d: Decoded) => void = () => undefined;
  private readonly waiters = new Set<() => void>();
  /** Sealed frames (transport/frame-mac.ts), once `protect` was called; the last one sent, to replay. */
  private mac: FrameMac | undefined;
  private sealedSeen = false;
  private lastSealed: Buffer | undefined;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      this.onMessage(this.open(toBuffer(data), isBinary));
      this.kick();
    });
    ws.on('close', (code) => {
      this.closed = true;
      this.closeCode = code;
      this.kick();
    });
    ws.on('error', () => undefined);
  }

  /** Connect; a refusal (HTTP status, reset, timeout) comes back as its reason. */
  static connect(url: string, timeoutMs: number): Promise<RawConn | string> {
    return new Promise((resolve) => {
      const ws = new WebSocket(url, { handshakeTimeout: timeoutMs, perMessageDeflate: false, maxPayload: 64 * MiB });
      const conn = new RawConn(ws);
      ws.once('open', () => resolve(conn));
      ws.once('unexpected-response', (req, res) => {
        req.destroy();
        resolve(`HTTP ${res.statusCode ?? '?'}`);
      });
      ws.once('error', (err) => resolve(err.message));
      ws.once('close', (code) => resolve(`closed ${code} before open`));
    });
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** From now on every frame sent is sealed under `key` and every reply must open under it. */
  protect(key: Uint8Array): void {
    this.mac = new FrameMac(key, 'client');
  }

  private open(bytes: Buffer, isBinary: boolean): Decoded {
    const body = this.mac && isBinary ? this.mac.open(bytes) : undefined;
    if (body) this.sealedSeen = true;
    const d = decode(body ?? (isBinary ? bytes : bytes.toString('utf8')), 64 * MiB);
    // On a sealed session every reply is sealed, but for the replica's refusal of the handshake.
    if (!this.mac || body || (!this.sealedSeen && d.ok && d.msg.type === 'error')) return d;
    return { ok: false, code: 'BAD_FRAME', message: 'a reply on a sealed session failed its MAC' };
  }

  send(f: { bytes: Buffer; binary: boolean }): boolean {
    if (!this.isOpen) return false;
    if (!this.mac) {
      this.ws.send(f.bytes, { binary: f.binary });
      return true;
    }
    const frame = Buffer.allocUnsafe(f.bytes.length + MAC_BYTES);
    f.bytes.copy(frame);
    this.mac.seal(frame);
    this.lastSealed = frame;
    this.ws.send(frame, { binary: true });
    return true;
  }

  /** On a sealed session: a frame whose seal is broken, as a relay or a forger would send it. */
  sendBroken(f: Frame, how: BrokenSeal): boolean {
    if (!this.isOpen) return false;
    if (how === 'replayed' && this.lastSealed) this.ws.send(this.lastSealed, { binary: true });
    else if (how === 'unsealed') this.ws.send(f.bytes, { binary: true });
    else if (how === 'text') this.ws.send(f.bytes, { binary: false });
    else {
      const frame = Buffer.concat([f.bytes, Buffer.alloc(MAC_BYTES)]);
      this.mac?.seal(frame);
      frame[frame.length - 1] = (frame[frame.length - 1] ?? 0) ^ 0x01;
      this.ws.send(frame, { binary: true });
    }
    return true;
  }

  sendMessage(m: Message): boolean {
    return this.send({ bytes: encode(m), binary: true });
  }

  /** Resolves true once `pred` holds, false at the timeout or when the connection closed without it. */
  until(pred: () => boolean, timeoutMs: number): Promise<boolean> {
    if (pred()) return Promise.resolve(true);
    if (this.closed) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (v: boolean) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(v);
      };
      const check = () => {
        if (pred()) done(true);
        else if (this.closed) done(false);
      };
      const timer = setTimeout(() => done(pred()), timeoutMs);
      this.waiters.add(check);
    });
  }

  close(code = 1000): void {
    this.byUs = true;
    this.ws.close(code);
  }

  terminate(): void {
    this.byUs = true;
    this.ws.terminate();
  }

  private kick(): void {
    for (const w of [...this.waiters]) w();
  }
}

// ---------------------------------------------------------------- the replica process

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, HERE.includes(join('dist', 'bench')) ? '../..' : '..');
const CHILD = join(ROOT, 'dist', 'cluster', 'child.js');
const REPLICA_ID = 'replica-fuzz';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    p.then((v) => (clearTimeout(t), resolve(v)), (e: unknown) => (clearTimeout(t), reject(e instanceof Error ? e : new Error(String(e)))));
  });
}

/** A field of /proc/<pid>/status in MiB (VmRSS now, VmHWM the peak); null where /proc is not there. */
function procMiB(pid: number | undefined, field: 'VmRSS' | 'VmHWM'): number | null {
  if (pid === undefined) return null;
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] ? Math.round((Number(m[1]) / 1024) * 10) / 10 : null;
  } catch {
    return null;
  }
}

interface ReplicaProc {
  url: string;
  proc: ChildProcess;
  /** Set when the process exited without being asked to. */
  crash: string | undefined;
  status: Extract<ChildReport, { type: 'status'; role: 'replica' }> | undefined;
  onCrash: (why: string) => void;
  stop(): Promise<void>;
}

/** A replica in its own process over a SQLite store in `dir`, configured over IPC as the launcher does. */
async function startReplica(dir: string, secret: string): Promise<ReplicaProc> {
  const port = await freePort();
  // Its own process group: a Ctrl-C meant for the fuzzer must not look like a crash. It exits when
  // the fuzzer goes away all the same (its IPC channel closes).
  const proc = fork(CHILD, ['replica'], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: [], detached: true });
  // A send to a process that just died is an 'error' event; its exit is what counts.
  proc.on('error', () => undefined);
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-4000)));
  let stopping = false;
  const r: ReplicaProc = {
    url: `ws://127.0.0.1:${port}`,
    proc,
    crash: undefined,
    status: undefined,
    onCrash: () => undefined,
    stop: async () => {
      stopping = true;
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise<void>((res) => proc.once('exit', () => res()));
      if (proc.connected) proc.send({ type: 'shutdown' }, undefined, {}, () => undefined);
      if (!(await Promise.race([exited.then(() => true), sleep(3000).then(() => false)]))) {
        proc.kill('SIGKILL');
        await Promise.race([exited, sleep(2000)]);
      }
    },
  };
  proc.on('message', (m) => {
    const msg = ChildReport.safeParse(m);
    if (msg.success && msg.data.type === 'status' && msg.data.role === 'replica') r.status = msg.data;
  });
  proc.once('exit', (code, signal) => {
    if (stopping) return;
    // Let the last stderr lines arrive before they are quoted.
    setTimeout(() => {
      r.crash = `replica process exited (code ${code ?? '-'}, signal ${signal ?? '-'})${stderr ? `: ${stderr.trim().split('\n').slice(-5).join(' | ')}` : ''}`;
      r.onCrash(r.crash);
    }, 50);
  });
  proc.send({ type: 'config', config: { id: REPLICA_ID, port, dir, store: `sqlite:${join(dir, 'store.sqlite')}`, secret, holdMs: 5000, history: false, pretty: false } });
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      proc.on('message', (m) => (m as { type?: unknown }).type === 'ready' && resolve());
      proc.once('exit', () => reject(new Error(`replica process exited before ready: ${stderr.trim()}`)));
    }),
    15_000,
    'replica start',
  );
  return r;
}

/** Lines at level error (50) or fatal (60) in the replica's pino log, with the first few messages. */
function logErrors(dir: string): { count: number; samples: string[] } {
  const out = { count: 0, samples: [] as string[] };
  const logs = join(dir, 'logs');
  if (!existsSync(logs)) return out;
  for (const f of readdirSync(logs)) {
    for (const line of readFileSync(join(logs, f), 'utf8').split('\n')) {
      if (!line.includes('"level":5') && !line.includes('"level":6')) continue;
      try {
        const e = JSON.parse(line) as { level?: number; msg?: string; err?: unknown };
        if ((e.level ?? 0) < 50) continue;
        out.count++;
        if (out.samples.length < 5) out.samples.push(`${e.msg ?? ''} ${JSON.stringify(e.err ?? '').slice(0, 300)}`);
      } catch {
        // A line cut by the process's exit.
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- the legitimate application

interface Legit {
  target: string;
  requestId: string;
  ops(): number;
  /** Stop writing, close the handle, stop the agent; the figures. */
  stop(): Promise<FuzzReport['legit']>;
}

/** 4 KiB whose every byte depends on the op's number, so a stale or foreign block shows. */
function pattern(i: number): Buffer {
  const b = Buffer.allocUnsafe(4096);
  for (let j = 0; j < 4096; j++) b[j] = (i * 31 + j * 7 + (j >> 8)) & 0xff;
  b.writeUInt32BE(i >>> 0, 0);
  return b;
}

/**
 * A node agent and an application that writes 4 KiB blocks and reads each back for as long as the
 * fuzz runs. A rejected operation, wrong bytes, an operation slower than `opTimeoutMs` or the
 * handle leaving `active` is a failure.
 */
async function startLegit(url: string, secret: string, opTimeoutMs: number): Promise<Legit> {
  const agent = new NodeAgent({ id: 'fuzz-legit', replicas: [url], transport: new WebSocketTransport(), secret });
  const errors: string[] = [];
  let failures = 0;
  const fail = (why: string) => {
    failures++;
    if (errors.length < 10) errors.push(why);
  };
  let h: Handle;
  try {
    await withTimeout(agent.start(), 10_000, 'legitimate agent start');
    const app = new Application(agent, { name: 'legit', pauseTimeoutMs: 60_000 });
    h = await withTimeout(app.open('fuzz-legit.disk'), 10_000, 'legitimate open');
  } catch (err) {
    agent.crash();
    throw err;
  }
  let stopping = false;
  const onState = (s: string) => !stopping && fail(`handle left active: ${s}${h.reason ? ` (${h.reason})` : ''}`);
  h.on('state', onState);
  const lat: number[] = [];
  let ops = 0;
  const timed = async <T>(p: Promise<T>, what: string): Promise<T> => {
    const t = performance.now();
    const v = await withTimeout(p, opTimeoutMs, what);
    lat.push(performance.now() - t);
    ops++;
    return v;
  };
  const loop = (async () => {
    for (let i = 0; !stopping; i++) {
      const offset = (i % 64) * 4096;
      const want = pattern(i);
      try {
        await timed(h.write(offset, want), `write ${i}`);
        const got = await timed(h.read(offset, 4096), `read ${i}`);
        if (Buffer.compare(Buffer.from(got), want) !== 0) fail(`read ${i} at ${offset}: wrong bytes`);
      } catch (err) {
        if (stopping) return;
        fail(`op ${i}: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
        // A stuck or refused handle will not get better within this run.
        return;
      }
    }
  })();
  let result: FuzzReport['legit'] | undefined;
  return {
    target: h.target,
    requestId: h.requestId,
    ops: () => ops,
    stop: async () => {
      if (result) return result;
      stopping = true;
      h.off('state', onState);
      // A handle still active finishes its operation and closes; one cut off from its replica is dropped.
      if (h.state === 'active') {
        await Promise.race([loop, sleep(2000)]);
        await Promise.race([h.close().catch(() => undefined), sleep(2000)]);
      }
      agent.crash();
      const sorted = [...lat].sort((a, b) => a - b);
      const q = (p: number) => Math.round((sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0) * 100) / 100;
      result = { ops, failures, errors, p99Ms: q(0.99), maxMs: q(1) };
      return result;
    },
  };
}

/** What the legitimate application's process and the fuzzer say to each other over IPC (validated on arrival). */
const LegitCommand = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), url: z.string(), secret: z.string(), opTimeoutMs: z.number() }),
  z.object({ type: z.literal('stop') }),
]);
const LegitFigures = z.object({ ops: z.number(), failures: z.number(), errors: z.array(z.string()), p99Ms: z.number(), maxMs: z.number() });
const LegitReport = z.discriminatedUnion('type', [
  z.object({ type: z.literal('ready'), target: z.string(), requestId: z.string() }),
  z.object({ type: z.literal('failed'), error: z.string() }),
  z.object({ type: z.literal('ops'), ops: z.number() }),
  z.object({ type: z.literal('figures'), figures: LegitFigures }),
]);
type LegitReport = z.infer<typeof LegitReport>;

/** `node dist/bench/fuzz.js --legit-child`: the legitimate application, in a process of its own. */
function legitChild(): void {
  const send = (m: LegitReport) => process.connected && process.send?.(m, undefined, {}, () => undefined);
  let legit: Legit | undefined;
  process.on('disconnect', () => process.exit(0));
  process.on('message', (raw) => {
    const m = LegitCommand.safeParse(raw);
    if (!m.success) return;
    if (m.data.type === 'start' && !legit) {
      startLegit(m.data.url, m.data.secret, m.data.opTimeoutMs).then(
        (l) => {
          legit = l;
          send({ type: 'ready', target: l.target, requestId: l.requestId });
          setInterval(() => send({ type: 'ops', ops: l.ops() }), 100).unref();
        },
        (err: unknown) => {
          send({ type: 'failed', error: String(err) });
          setTimeout(() => process.exit(1), 100);
        },
      );
    } else if (m.data.type === 'stop') {
      void (legit?.stop() ?? Promise.resolve({ ops: 0, failures: 1, errors: ['stopped before it started'], p99Ms: 0, maxMs: 0 })).then((figures) => {
        send({ type: 'figures', figures });
        setTimeout(() => process.exit(0), 100);
      });
    }
  });
}

/**
 * The legitimate application in its own process (dist/bench/fuzz.js --legit-child): the fuzzer's
 * own work (drawing and checking frames) must not show up as the replica's latency. Its process
 * exiting early is a legitimate failure.
 */
async function legitProcess(url: string, secret: string, opTimeoutMs: number): Promise<Legit> {
  const proc = fork(join(ROOT, 'dist', 'bench', 'fuzz.js'), ['--legit-child'], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: [], detached: true });
  proc.on('error', () => undefined);
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-2000)));
  let ops = 0;
  let figures: FuzzReport['legit'] | undefined;
  let stopping = false;
  const listeners = new Set<(m: LegitReport) => void>();
  proc.on('message', (raw) => {
    const m = LegitReport.safeParse(raw);
    if (!m.success) return;
    if (m.data.type === 'ops') ops = m.data.ops;
    if (m.data.type === 'figures') figures = m.data.figures;
    for (const l of listeners) l(m.data);
  });
  const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const next = <T>(pick: (m: LegitReport) => T | undefined, ms: number, what: string): Promise<T> =>
    withTimeout(
      new Promise<T>((resolve, reject) => {
        const l = (m: LegitReport) => {
          const v = pick(m);
          if (v !== undefined) (listeners.delete(l), resolve(v));
        };
        listeners.add(l);
        void gone.then(() => reject(new Error(`the legitimate application's process exited${stderr ? `: ${stderr.trim()}` : ''}`)));
      }),
      ms,
      what,
    );
  try {
    proc.send({ type: 'start', url, secret, opTimeoutMs });
    const ready = await next((m) => (m.type === 'ready' ? m : m.type === 'failed' ? { error: m.error } : undefined), 25_000, 'legitimate application start');
    if ('error' in ready) throw new Error(`the legitimate application could not start: ${ready.error}`);
    void gone.then(() => {
      if (!stopping) figures = { ops, failures: 1, errors: [`its process exited during the run${stderr ? `: ${stderr.trim()}` : ''}`], p99Ms: 0, maxMs: 0 };
    });
    return {
      target: ready.target,
      requestId: ready.requestId,
      ops: () => ops,
      stop: async () => {
        stopping = true;
        if (!figures && proc.connected) {
          proc.send({ type: 'stop' }, undefined, {}, () => undefined);
          await next((m) => (m.type === 'figures' ? m : undefined), 10_000, 'legitimate application stop').catch(() => undefined);
        }
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
        return figures ?? { ops, failures: 1, errors: ['its process did not report its figures'], p99Ms: 0, maxMs: 0 };
      },
    };
  } catch (err) {
    proc.kill('SIGKILL');
    throw err;
  }
}

// ---------------------------------------------------------------- the fuzz connections

type PreScenario =
  | 'junk-first' | 'bad-hello' | 'oversized-first' | 'half-handshake' | 'junk-after-challenge'
  | 'wrong-node-proof' | 'forged-credential' | 'replayed-auth' | 'wrong-principal-proof' | 'hello-twice' | 'silent' | 'invalid-utf8';

const PRE_SCENARIOS: ReadonlyArray<readonly [number, PreScenario]> = [
  [28, 'junk-first'], [12, 'bad-hello'], [2, 'oversized-first'], [12, 'half-handshake'], [10, 'junk-after-challenge'],
  [8, 'wrong-node-proof'], [4, 'forged-credential'], [4, 'replayed-auth'], [8, 'wrong-principal-proof'], [5, 'hello-twice'], [4, 'silent'], [3, 'invalid-utf8'],
];

interface ConnPlan {
  index: number;
  kind: 'pre' | 'post';
  scenario: PreScenario;
  /**
   * Post-authentication: mixed frames; only codec-level garbage until the replica closes the session
   * (4002); or mixed frames on a sealed session, which may end with a broken seal.
   */
  style: 'mixed' | 'flood' | 'sealed';
  budget: number;
}

/** Who does what, drawn from the seed before anything runs. */
function buildPlan(seed: number, frames: number, connections: number): { plan: ConnPlan[]; share: number } {
  const r = new Rng(seededRandom(seed));
  const plan: ConnPlan[] = [];
  for (let i = 0; i < connections; i++) {
    plan.push({ index: i, kind: r.chance(0.3) ? 'pre' : 'post', scenario: r.weighted(PRE_SCENARIOS), style: r.weighted([[10, 'flood'], [25, 'sealed'], [65, 'mixed']] as const), budget: 0 });
  }
  const pre = plan.filter((p) => p.kind === 'pre').length;
  const posts = plan.length - pre;
  const share = posts > 0 ? Math.max(1, Math.round((frames - pre * 2) / posts)) : Math.max(1, frames);
  for (const p of plan) if (p.kind === 'post') p.budget = p.style === 'flood' ? Math.max(share, 110 + r.int(60)) : Math.max(1, Math.round(share * (0.5 + r.next())));
  return { plan, share };
}

/** What every connection adds to; one object, one event loop. */
class Tallies {
  framesSent = 0;
  preAuthFrames = 0;
  postAuthFrames = 0;
  connections = 0;
  preAuthConnections = 0;
  sessions = 0;
  refusedByLimit = 0;
  answered = 0;
  absorbedByClose = 0;
  unanswered = 0;
  unpredictedAnswers = 0;
  preAuthUnrefused = 0;
  handshakeFailures = 0;
  invalidReplies = 0;
  sealedSessions = 0;
  brokenSeals = 0;
  brokenSealsKept = 0;
  readonly errorsByCode: Record<string, number> = {};
  readonly otherAnswers: Record<string, number> = {};
  readonly closedByReplica: Record<string, number> = {};
  readonly framesByKind: Record<string, number> = {};
  readonly preAuthScenarios: Record<string, number> = {};
  readonly findings: string[] = [];

  finding(line: string): void {
    if (this.findings.length < 30) this.findings.push(line);
  }
}

/** Frames a session sends before it waits for their answers: at most this many are in flight when the replica closes it. */
export const MAX_WAVE = 32;
const bump = (t: Record<string, number>, k: string, n = 1) => void (t[k] = (t[k] ?? 0) + n);
/** Answers a replica may send unasked; never counted as the answer to a frame. */
const UNSOLICITED = new Set(['notice', 'revoked']);
const WRONG_SECRET = 'not-the-cluster-secret-not-the-cluster-secret';

interface Run {
  url: string;
  maxNestingBytes: number;
  secret: string;
  seed: number;
  answerTimeoutMs: number;
  t: Tallies;
  legit: { target: string; requestId: string } | undefined;
  /** Frames still to send. */
  remaining: number;
  stopping: boolean;
  live: Set<RawConn>;
  /** An `auth` of an earlier session, replayed on a later handshake. */
  lastAuth: MessageOf<'auth'> | undefined;
  onSent: () => void;
}

function context(run: Run, p: ConnPlan): GenContext {
  let id = 0;
  return { rng: new Rng(seededRandom(connectionSeed(run.seed, p.index))), nextId: () => ++id, usedIds: new Set(), legit: run.legit, maxNestingBytes: run.maxNestingBytes };
}

/** Count a frame sent; false (and nothing sent) if the connection is no longer open. */
function sendCounted(run: Run, conn: RawConn, f: Frame, pre: boolean): boolean {
  if (!conn.send(f)) return false;
  const t = run.t;
  t.framesSent++;
  if (pre) t.preAuthFrames++;
  else t.postAuthFrames++;
  bump(t.framesByKind, pre ? `pre:${f.kind}` : f.kind);
  run.remaining = Math.max(0, run.remaining - 1);
  run.onSent();
  return true;
}

async function open(run: Run, p: ConnPlan): Promise<RawConn | undefined> {
  run.t.connections++;
  const c = await RawConn.connect(run.url, 5000);
  if (typeof c === 'string') {
    if (!run.stopping) {
      run.t.refusedByLimit++;
      run.t.finding(`connection #${p.index} refused before open: ${c}`);
      await sleep(50);
    }
    return undefined;
  }
  run.live.add(c);
  return c;
}

function finish(run: Run, conn: RawConn): void {
  run.live.delete(conn);
  if (conn.closed && !conn.byUs) bump(run.t.closedByReplica, String(conn.closeCode));
  if (!conn.closed) conn.terminate();
}

/** A `hello` with one field wrong; some odd shapes are valid names ('P', 64 x's), so drawn until the codec refuses it. */
function badHello(c: GenContext, node: string, nonce: string): Frame {
  for (let attempt = 0; attempt < 16; attempt++) {
    const h: JsonObject = { type: 'hello', v: PROTOCOL_VERSION, node, nonce };
    const k = c.rng.pick(['v', 'node', 'nonce']);
    h[k] = k === 'v' ? c.rng.pick<Json>([1, 2, 4, '3', null, 3.5]) : c.rng.pick<Json>([...BAD_SHAPES, null, 3]);
    const f = text(stringify(h), 'bad-hello');
    if (!decode(f.bytes.toString()).ok) return f;
  }
  return text(stringify({ type: 'hello', v: PROTOCOL_VERSION, node, nonce: '' }), 'bad-hello');
}

/** One pre-authentication connection: garbage, a broken handshake, or nothing; then it is dropped. */
async function preAuth(run: Run, p: ConnPlan): Promise<void> {
  const t = run.t;
  t.preAuthConnections++;
  bump(t.preAuthScenarios, p.scenario);
  const conn = await open(run, p);
  if (!conn) return;
  const c = context(run, p);
  let challenge: MessageOf<'challenge'> | undefined;
  let welcome: MessageOf<'welcome'> | undefined;
  let refusedWith: string | undefined;
  conn.onMessage = (d) => {
    if (!d.ok) {
      t.invalidReplies++;
      return t.finding(`pre-auth #${p.index}: reply failed the codec: ${d.code} ${d.message}`);
    }
    if (d.msg.type === 'error') {
      bump(t.errorsByCode, d.msg.code);
      refusedWith ??= d.msg.code;
    } else bump(t.otherAnswers, d.msg.type);
    if (d.msg.type === 'challenge') challenge = d.msg;
    if (d.msg.type === 'welcome') welcome = d.msg;
  };
  const node = `fuzz-${p.index}`;
  const nonce = seededIds(c.rng.next)();
  const sentHere: Frame[] = [];
  const send = (f: Frame): boolean => sendCounted(run, conn, f, true) && sentHere.push(f) > 0;
  const hello = (): boolean => send({ bytes: encode(helloFrame(issueCredential(run.secret, 'node', node), nonce)), binary: true, kind: 'hello' });
  const gotChallenge = async () => hello() && (await conn.until(() => challenge !== undefined || refusedWith !== undefined, 3000)) && challenge !== undefined;
  /** The replica owes a refusal: an error and a close (or a close alone, for a limit or a protocol error in `ws`). */
  const expectRefusal = async (what: string) => {
    if (!(await conn.until(() => conn.closed, 3000)) && !run.stopping) {
      t.preAuthUnrefused++;
      t.finding(`pre-auth #${p.index} (${p.scenario}): ${what} was neither refused nor closed within 3 s${refusedWith ? ` (got ${refusedWith})` : ''}; sent ${sentHere.map(preview).join(', ')}`);
    }
  };
  const auth = (ch: MessageOf<'challenge'>, how: 'random' | 'forged' | 'replayed' | 'principal'): MessageOf<'auth'> => {
    const tr = transcript(node, nonce, ch.nonce, ch.replica);
    if (how === 'random') return { type: 'auth', proof: c.rng.str(43), principals: [] };
    if (how === 'forged') return { type: 'auth', proof: proofs.node(credentialKey(issueCredential(WRONG_SECRET, 'node', node)), tr), principals: [] };
    if (how === 'replayed') return run.lastAuth ?? { type: 'auth', proof: c.rng.str(43), principals: [] };
    // The node's own proof is right; the principal's is made with a key from another cluster.
    return answerChallenge(issueCredential(run.secret, 'node', node), [issueCredential(WRONG_SECRET, 'principal', PRINCIPAL)], nonce, ch).auth;
  };
  try {
    switch (p.scenario) {
      case 'silent':
        await sleep(c.rng.int(50));
        return;
      case 'junk-first':
        for (let i = 1 + c.rng.int(3); i > 0; i--) send(junkFrame(c));
        return await expectRefusal('garbage instead of hello');
      case 'bad-hello': {
        const f = badHello(c, node, nonce);
        send(f);
        return await expectRefusal('a malformed hello');
      }
      case 'oversized-first': {
        // Whichever stops it first (the pre-authentication byte limit, ws's own size limit, the
        // codec's FRAME_TOO_LARGE), the connection must go.
        const size = c.rng.chance(0.5) ? MAX_FRAME + 1 + c.rng.int(MiB) : 2 * MAX_FRAME + 1 + c.rng.int(MiB);
        send(text(`{"type":"hello","pad":"${'h'.repeat(size)}"}`, 'oversized-first'));
        return await expectRefusal('an oversized first frame');
      }
      case 'invalid-utf8':
        send({ bytes: Buffer.from([0x7b, 0xff, 0xfe, 0xc3, 0x28, 0x7d]), binary: false, kind: 'invalid-utf8' });
        return await expectRefusal('a text frame of invalid UTF-8');
      case 'half-handshake':
        if (!(await gotChallenge()) && !run.stopping) {
          t.preAuthUnrefused++;
          t.finding(`pre-auth #${p.index}: a valid hello got no challenge within 3 s${refusedWith ? ` (got ${refusedWith})` : ''}`);
        }
        return;
      case 'hello-twice':
        if (await gotChallenge()) hello();
        return await expectRefusal('a second hello');
      case 'junk-after-challenge':
        if (await gotChallenge()) send(junkFrame(c));
        return await expectRefusal('garbage instead of auth');
      case 'wrong-principal-proof': {
        // The node's proof is right: the session opens, and the welcome names the principal refused.
        if ((await gotChallenge()) && challenge) send({ bytes: encode(auth(challenge, 'principal')), binary: true, kind: p.scenario });
        const answered = await conn.until(() => welcome !== undefined || conn.closed, 3000);
        if (!run.stopping && (!answered || !welcome?.refused?.includes(PRINCIPAL))) {
          t.preAuthUnrefused++;
          t.finding(`pre-auth #${p.index} (${p.scenario}): a wrong principal proof was not refused in the welcome${refusedWith ? ` (got ${refusedWith})` : ''}; sent ${sentHere.map(preview).join(', ')}`);
        }
        return;
      }
      default: {
        const how = p.scenario === 'wrong-node-proof' ? 'random' : p.scenario === 'forged-credential' ? 'forged' : 'replayed';
        if ((await gotChallenge()) && challenge) send({ bytes: encode(auth(challenge, how)), binary: true, kind: p.scenario });
        return await expectRefusal(`an auth with a wrong proof (${p.scenario})`);
      }
    }
  } finally {
    finish(run, conn);
  }
}

/** Authenticate as `node` proving PRINCIPAL (asking for sealed frames or not); the welcome, or why not (a limit's refusal or a failure). */
async function login(run: Run, conn: RawConn, node: string, nonce: string, seal: boolean): Promise<{ ok: true } | { ok: false; limit: boolean; why: string }> {
  const l = bareLogin(issueCredential(run.secret, 'node', node), [issueCredential(run.secret, 'principal', PRINCIPAL)], nonce, seal);
  let welcomed = false;
  let heard = false;
  let refusal: string | undefined;
  conn.onMessage = (d) => {
    heard = true;
    if (!d.ok) return void (refusal = `reply failed the codec: ${d.code}`);
    if (d.msg.type === 'welcome') return void (welcomed = true);
    if (d.msg.type === 'error') return void (refusal ??= d.msg.code);
    try {
      const auth = l.answer(d.msg);
      if (auth) {
        run.lastAuth = auth;
        conn.sendMessage(auth);
        // The welcome is the first sealed frame.
        const key = l.key();
        if (seal && key) conn.protect(key);
      }
    } catch (err) {
      refusal = (err as Error).message;
    }
  };
  conn.sendMessage(l.hello);
  await conn.until(() => welcomed || refusal !== undefined, 5000);
  if (welcomed) return { ok: true };
  if (refusal === undefined && !conn.closed) return { ok: false, limit: false, why: 'no welcome within 5 s' };
  // A limit refuses with its own code (UNAVAILABLE), or drops the connection before a word of the
  // handshake (maxConnections, maxUnauthenticated); AUTH_FAILED, or a drop mid-handshake, is a failure.
  const limit = refusal === undefined ? !heard && conn.closeCode !== CLOSE.AUTH_FAILED : refusal !== 'AUTH_FAILED' && !refusal.startsWith('reply');
  return { ok: false, limit, why: refusal ?? `closed ${conn.closeCode}` };
}

/** One authenticated session: waves of malformed frames, each wave answered before the next. */
async function postAuth(run: Run, p: ConnPlan): Promise<void> {
  const t = run.t;
  const conn = await open(run, p);
  if (!conn) return;
  const c = context(run, p);
  try {
    const sealed = p.style === 'sealed';
    const in_ = await login(run, conn, `fuzz-${p.index}`, seededIds(c.rng.next)(), sealed);
    if (!in_.ok) {
      if (run.stopping) return;
      if (in_.limit) t.refusedByLimit++;
      else t.handshakeFailures++;
      t.finding(`session #${p.index}: not authenticated: ${in_.why}${in_.limit ? ' (counted as refused by limit)' : ''}`);
      return;
    }
    t.sessions++;
    if (sealed) t.sealedSessions++;
    const expected: Record<string, number> = {};
    const got: Record<string, number> = {};
    let answers = 0;
    conn.onMessage = (d) => {
      if (!d.ok) {
        t.invalidReplies++;
        return t.finding(`session #${p.index}: reply failed the codec: ${d.code} ${d.message}`);
      }
      const key = d.msg.type === 'error' ? `error:${d.msg.code}` : d.msg.type;
      if (d.msg.type === 'error') bump(t.errorsByCode, d.msg.code);
      else bump(t.otherAnswers, d.msg.type);
      if (UNSOLICITED.has(d.msg.type)) return;
      answers++;
      bump(got, key);
    };
    const table = p.style === 'flood' ? DECODE_LEVEL : MIXED;
    let sent = 0;
    while (!run.stopping && sent < p.budget && run.remaining > 0 && conn.isOpen) {
      const wave = Math.min(1 + c.rng.int(MAX_WAVE), p.budget - sent, run.remaining);
      for (let i = 0; i < wave; i++) {
        const f = nextFrame(c, table, sealed);
        if (!sendCounted(run, conn, f, false)) break;
        bump(expected, f.expect);
        sent++;
      }
      if (!(await conn.until(() => answers >= sent, run.answerTimeoutMs))) break;
    }
    // Let answers to the last frames arrive if the loop stopped early.
    if (answers < sent && conn.isOpen) await conn.until(() => answers >= sent, run.stopping ? 500 : run.answerTimeoutMs);
    t.answered += Math.min(answers, sent);
    const missing = Math.max(0, sent - answers);
    // Closed by the replica with a code (4002 after too many bad frames, or a limit): frames in flight are absorbed.
    if (conn.closed && !conn.byUs && conn.closeCode !== 1006 && conn.closeCode !== 1005) t.absorbedByClose += missing;
    else if (missing > 0 && !run.stopping) {
      t.unanswered += missing;
      t.finding(`session #${p.index}: ${missing} of ${sent} frames unanswered (${conn.closed ? `closed ${conn.closeCode}` : 'connection open'}); expected ${JSON.stringify(expected)}, got ${JSON.stringify(got)}`);
    }
    for (const [k, n] of Object.entries(got)) {
      const extra = n - (expected[k] ?? 0);
      if (extra <= 0) continue;
      t.unpredictedAnswers += extra;
      t.finding(`session #${p.index}: ${extra} × ${k} not predicted (predicted ${JSON.stringify(expected)})`);
    }
    if (sealed && conn.isOpen && !run.stopping && run.remaining > 0 && c.rng.chance(0.5)) {
      // A broken seal: the replica must drop the session (and answer nothing to it).
      const how = c.rng.pick<BrokenSeal>(['flipped-mac', 'replayed', 'unsealed', 'text']);
      if (conn.sendBroken(asBinary(nextFrame(c, table, true)), how)) {
        t.framesSent++;
        t.brokenSeals++;
        run.remaining--;
        bump(t.framesByKind, `broken-seal:${how}`);
        if (!(await conn.until(() => conn.closed, 3000)) && !run.stopping) {
          t.brokenSealsKept++;
          t.finding(`sealed session #${p.index}: still open 3 s after a frame with a broken seal (${how})`);
        }
      }
    }
    if (conn.isOpen) {
      if (c.rng.chance(0.5)) {
        conn.close(1000);
        await conn.until(() => conn.closed, 1000);
      }
    }
  } finally {
    finish(run, conn);
  }
}

/** A fresh session after the fuzz: authenticated, and its ping answered. */
async function checkAlive(url: string, secret: string): Promise<{ ok: boolean; detail: string }> {
  const conn = await RawConn.connect(url, 5000);
  if (typeof conn === 'string') return { ok: false, detail: `cannot connect: ${conn}` };
  try {
    const nonce = randomBytes(16).toString('base64url');
    const l = bareLogin(issueCredential(secret, 'node', 'fuzz-check'), [issueCredential(secret, 'principal', PRINCIPAL)], nonce);
    let welcomed = false;
    let pong = false;
    conn.onMessage = (d) => {
      if (!d.ok) return;
      if (d.msg.type === 'welcome') {
        welcomed = true;
        conn.sendMessage({ type: 'ping', t: 4242 });
      } else if (d.msg.type === 'pong' && d.msg.t === 4242) pong = true;
      else {
        const auth = l.answer(d.msg);
        if (auth) conn.sendMessage(auth);
      }
    };
    conn.sendMessage(l.hello);
    await conn.until(() => pong, 5000);
    return pong ? { ok: true, detail: 'a fresh session was welcomed and its ping answered' } : { ok: false, detail: welcomed ? 'welcomed, but no pong within 5 s' : `no welcome within 5 s${conn.closed ? ` (closed ${conn.closeCode})` : ''}` };
  } finally {
    conn.terminate();
  }
}

// ---------------------------------------------------------------- the run

/**
 * Start a replica process (SQLite store, temp dir), a legitimate application writing and reading
 * through it, then `frames` malformed frames over `connections` connections, `concurrency` at a
 * time. Always cleans up; stops by itself at `deadlineMs`.
 */
export async function runFuzz(opts: FuzzOptions = {}): Promise<FuzzReport> {
  const frames = opts.frames ?? 100_000;
  const connections = opts.connections ?? 1000;
  const concurrency = Math.max(1, opts.concurrency ?? 50);
  const seed = (opts.seed ?? randomBytes(4).readUInt32BE(0)) >>> 0;
  const settleMs = opts.settleMs ?? 1000;
  const log = opts.log ?? (() => undefined);
  const t0 = performance.now();
  const t = new Tallies();
  const dir = mkdtempSync(join(os.tmpdir(), 'safe-resume-fuzz-'));
  const secret = randomBytes(32).toString('base64url');
  let replica: ReplicaProc | undefined;
  let legit: Legit | undefined;
  let timedOut = false;
  let alive = { ok: false, detail: 'not checked' };
  let legitReport: FuzzReport['legit'] = { ops: 0, failures: 0, errors: [], p99Ms: 0, maxMs: 0 };
  let rssBefore: number | null = null;
  let rssAfter: number | null = null;
  let rssPeak: number | null = null;
  let logs = { count: 0, samples: [] as string[] };
  const run: Run = {
    url: '', maxNestingBytes: opts.heavy ? MAX_FRAME - 64 : 200_000, secret, seed, answerTimeoutMs: opts.answerTimeoutMs ?? 10_000, t, legit: undefined,
    remaining: frames, stopping: false, live: new Set(), lastAuth: undefined, onSent: () => undefined,
  };
  const stop = (why: string) => {
    if (run.stopping) return;
    run.stopping = true;
    log(`stopping: ${why}`);
    for (const c of run.live) c.terminate();
  };
  const deadline = setTimeout(() => {
    timedOut = true;
    stop(`deadline of ${opts.deadlineMs ?? 600_000} ms`);
  }, opts.deadlineMs ?? 600_000);
  const onAbort = () => stop('interrupted');
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    replica = await startReplica(dir, secret);
    const r = replica;
    r.onCrash = (why) => {
      t.finding(why);
      stop('the replica process exited');
    };
    run.url = r.url;
    log(`seed ${seed}; replica ${r.url} (pid ${r.proc.pid ?? '?'}), store sqlite in ${dir}`);
    legit = await legitProcess(r.url, secret, 10_000);
    run.legit = { target: legit.target, requestId: legit.requestId };
    const warm = legit;
    for (let i = 0; i < 40 && warm.ops() < 20; i++) await sleep(50);
    rssBefore = procMiB(r.proc.pid, 'VmRSS');

    const { plan, share } = buildPlan(seed, frames, connections);
    let step = Math.max(1, Math.round(frames / 10));
    run.onSent = () => {
      if (t.framesSent === opts.killReplicaAtFrame) r.proc.kill('SIGKILL');
      if (t.framesSent >= step) {
        log(`${t.framesSent} frames, ${t.connections} connections, legitimate ops ${warm.ops()}`);
        step += Math.max(1, Math.round(frames / 10));
      }
    };
    // The plan first; then, if sessions the replica closed early (4002) left frames unsent, more
    // sessions until they are sent (at most as many again).
    let next = 0;
    let extra = 0;
    const nextPlanned = () => plan[next++];
    const nextExtra = (): ConnPlan | undefined =>
      run.remaining > 0 && extra < Math.max(connections, 100) ? { index: plan.length + extra++, kind: 'post', scenario: 'silent', style: 'mixed', budget: share } : undefined;
    const worker = async (take: () => ConnPlan | undefined) => {
      for (let p = take(); p && !run.stopping; p = take()) {
        try {
          await (p.kind === 'pre' ? preAuth(run, p) : postAuth(run, p));
        } catch (err) {
          t.finding(`connection #${p.index}: the fuzzer failed: ${(err as Error).stack ?? String(err)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, () => worker(nextPlanned)));
    await Promise.all(Array.from({ length: concurrency }, () => worker(nextExtra)));
    log(`fuzz done: ${t.framesSent} frames over ${t.connections} connections`);

    if (!r.crash) await sleep(settleMs);
    rssAfter = procMiB(r.proc.pid, 'VmRSS');
    rssPeak = procMiB(r.proc.pid, 'VmHWM');
    alive = r.crash ? { ok: false, detail: r.crash } : await checkAlive(r.url, secret);
    legitReport = await legit.stop();
  } finally {
    clearTimeout(deadline);
    opts.signal?.removeEventListener('abort', onAbort);
    run.stopping = true;
    for (const c of run.live) c.terminate();
    if (legit) legitReport = await legit.stop();
    await replica?.stop();
    logs = logErrors(dir);
    rmSync(dir, { recursive: true, force: true });
  }
  for (const s of logs.samples) t.finding(`replica log: ${s}`);
  for (const e of legitReport.errors) t.finding(`legitimate application: ${e}`);
  const crashes = replica?.crash ? 1 : 0;
  const report: FuzzReport = {
    ok: false,
    seed,
    heavy: opts.heavy ?? false,
    durationMs: Math.round(performance.now() - t0),
    timedOut,
    interrupted: opts.signal?.aborted ?? false,
    framesSent: t.framesSent,
    preAuthFrames: t.preAuthFrames,
    postAuthFrames: t.postAuthFrames,
    connections: t.connections,
    preAuthConnections: t.preAuthConnections,
    sessions: t.sessions,
    concurrency,
    refusedByLimit: t.refusedByLimit,
    errorsByCode: t.errorsByCode,
    otherAnswers: t.otherAnswers,
    closedByReplica: t.closedByReplica,
    answered: t.answered,
    absorbedByClose: t.absorbedByClose,
    unanswered: t.unanswered,
    unpredictedAnswers: t.unpredictedAnswers,
    preAuthUnrefused: t.preAuthUnrefused,
    sealedSessions: t.sealedSessions,
    brokenSeals: t.brokenSeals,
    brokenSealsKept: t.brokenSealsKept,
    handshakeFailures: t.handshakeFailures,
    invalidReplies: t.invalidReplies,
    crashes,
    crash: replica?.crash,
    aliveAtEnd: alive.ok,
    aliveDetail: alive.detail,
    legit: legitReport,
    replica: {
      rssBeforeMiB: rssBefore,
      rssPeakMiB: rssPeak,
      rssAfterMiB: rssAfter,
      badFramesCounted: replica?.status?.stats.badFrames ?? null,
      sessionsOpened: replica?.status?.stats.sessions ?? null,
      logErrors: logs.count,
    },
    framesByKind: t.framesByKind,
    preAuthScenarios: t.preAuthScenarios,
    findings: t.findings,
  };
  report.ok = failures(report).length === 0;
  return report;
}

/** The checks a run must pass, as the words of those it failed. */
export function failures(r: FuzzReport): string[] {
  const out: string[] = [];
  if (r.crashes > 0) out.push(`replica crashed (${r.crash ?? ''})`);
  if (!r.aliveAtEnd) out.push(`replica not answering a fresh session at the end (${r.aliveDetail})`);
  if (r.timedOut) out.push('the run hit its deadline');
  if (r.interrupted) out.push('the run was interrupted');
  if (r.legit.failures > 0) out.push(`${r.legit.failures} legitimate failure(s)`);
  if (r.legit.ops === 0) out.push('the legitimate application did nothing');
  if (r.unanswered > 0) out.push(`${r.unanswered} post-authentication frame(s) unanswered`);
  if (r.unpredictedAnswers > 0) out.push(`${r.unpredictedAnswers} answer(s) with another code than predicted`);
  if (r.preAuthUnrefused > 0) out.push(`${r.preAuthUnrefused} pre-authentication connection(s) neither refused nor closed`);
  if (r.brokenSealsKept > 0) out.push(`${r.brokenSealsKept} sealed session(s) kept after a broken seal`);
  if (r.handshakeFailures > 0) out.push(`${r.handshakeFailures} session(s) could not authenticate`);
  if (r.invalidReplies > 0) out.push(`${r.invalidReplies} reply frame(s) failed the codec`);
  if ((r.errorsByCode.INTERNAL ?? 0) > 0) out.push(`${r.errorsByCode.INTERNAL ?? 0} INTERNAL error(s)`);
  if (r.replica.logErrors > 0) out.push(`${r.replica.logErrors} error line(s) in the replica log`);
  return out;
}

const n = (x: number) => x.toLocaleString('en-US');
const mib = (x: number | null) => (x === null ? 'n/a' : `${x.toFixed(1)} MiB`);
const tally = (t: Record<string, number>, limit = 40) =>
  Object.entries(t).sort((a, b) => b[1] - a[1]).slice(0, limit).map(([k, v]) => `${k} ${n(v)}`).join(' · ') || '-';

/** The report as the CLI prints it. */
export function formatFuzzReport(r: FuzzReport): string {
  const bad = failures(r);
  const lines = [
    `safe-resume fuzz: ${r.ok ? 'PASS' : 'FAIL'} (seed ${r.seed}${r.heavy ? ', heavy' : ''}; reproduce the frames with --seed ${r.seed}${r.heavy ? ' --heavy' : ''})`,
    `  frames sent         ${n(r.framesSent)} (pre-auth ${n(r.preAuthFrames)}, post-auth ${n(r.postAuthFrames)}) in ${(r.durationMs / 1000).toFixed(1)} s${r.timedOut ? ' (deadline hit)' : ''}`,
    `  connections         ${n(r.connections)} (${r.concurrency} at a time): pre-auth ${n(r.preAuthConnections)}, sessions ${n(r.sessions)}, refused by limit ${n(r.refusedByLimit)}`,
    `  post-auth frames    answered ${n(r.answered)}, absorbed by a replica close ${n(r.absorbedByClose)}, unanswered ${n(r.unanswered)}, unpredicted answers ${n(r.unpredictedAnswers)}`,
    `  pre-auth            unrefused ${n(r.preAuthUnrefused)}; sessions that failed to authenticate ${n(r.handshakeFailures)}; invalid replies ${n(r.invalidReplies)}`,
    `  sealed sessions     ${n(r.sealedSessions)}; broken seals sent ${n(r.brokenSeals)}, sessions kept after one ${n(r.brokenSealsKept)}`,
    `  errors received     ${tally(r.errorsByCode)}`,
    `  other answers       ${tally(r.otherAnswers)}`,
    `  closed by replica   ${tally(r.closedByReplica)}`,
    `  crashes             ${r.crashes}${r.crash ? ` (${r.crash})` : ''}; at the end: ${r.aliveDetail}`,
    `  legitimate app      ${n(r.legit.ops)} ops (4 KiB writes and verified reads), ${r.legit.failures} failures, p99 ${r.legit.p99Ms} ms, max ${r.legit.maxMs} ms`,
    `  replica RSS         before ${mib(r.replica.rssBeforeMiB)}, peak ${mib(r.replica.rssPeakMiB)}, after ${mib(r.replica.rssAfterMiB)}`,
    `  replica counters    bad frames ${r.replica.badFramesCounted ?? 'n/a'}, sessions opened ${r.replica.sessionsOpened ?? 'n/a'}, error lines in its log ${r.replica.logErrors}`,
    `  pre-auth scenarios  ${tally(r.preAuthScenarios)}`,
    `  frames by kind      ${tally(r.framesByKind)}`,
  ];
  if (bad.length > 0) lines.push('  failed checks:', ...bad.map((b) => `    - ${b}`));
  if (r.findings.length > 0) lines.push('  findings:', ...r.findings.map((f) => `    - ${f}`));
  return lines.join('\n');
}

// ---------------------------------------------------------------- command line

const HELP = `node dist/bench/fuzz.js [--frames N] [--connections N] [--concurrency N] [--seed N] [--deadline SECONDS] [--heavy] [--json]

Starts a replica process and a legitimate application writing and reading through it, then sends
malformed frames over many connections and reports crashes, the application's failures, the
replica's answers and its memory before and after. Exit status 0 only if every check passed.
See docs/fuzz.md.
`;

export async function main(argv: string[]): Promise<number> {
  const num = (flag: string): number | undefined => {
    const at = argv.indexOf(flag);
    if (at < 0) return undefined;
    const v = Number(argv[at + 1]);
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${flag} takes a non-negative integer`);
    return v;
  };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP);
    return 0;
  }
  const known = ['--frames', '--connections', '--concurrency', '--seed', '--deadline'];
  const unknown = argv.filter((a, i) => a !== '--json' && a !== '--heavy' && !known.includes(a) && !known.includes(argv[i - 1] ?? ''));
  if (unknown.length > 0) {
    process.stderr.write(`fuzz: unknown argument ${unknown[0]}\n\n${HELP}`);
    return 2;
  }
  const o: FuzzOptions = { log: (l) => process.stderr.write(`fuzz: ${l}\n`) };
  const frames = num('--frames');
  const connections = num('--connections');
  const concurrency = num('--concurrency');
  const seed = num('--seed');
  const deadline = num('--deadline');
  if (frames !== undefined) o.frames = frames;
  if (connections !== undefined) o.connections = connections;
  if (concurrency !== undefined) o.concurrency = concurrency;
  if (seed !== undefined) o.seed = seed;
  if (deadline !== undefined) o.deadlineMs = deadline * 1000;
  if (argv.includes('--heavy')) o.heavy = true;
  // Ctrl-C stops the run; it still cleans up and prints what it saw.
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  o.signal = ac.signal;
  const r = await runFuzz(o);
  process.stdout.write(argv.includes('--json') ? JSON.stringify(r, null, 2) + '\n' : formatFuzzReport(r) + '\n');
  return r.ok ? 0 : 1;
}

if (process.argv[1]?.endsWith(join('bench', 'fuzz.js')) && process.argv.includes('--legit-child')) legitChild();
else if (process.argv[1]?.endsWith(join('bench', 'fuzz.js'))) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err);
      process.exit(2);
    },
  );
}
