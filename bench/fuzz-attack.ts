/** The fuzz connections: the plan of each, before and after the handshake, and what came back. */
import { randomBytes } from 'node:crypto';
import { credentialKey, issueCredential, proofs, transcript } from '../actors/auth.js';
import { seededIds, seededRandom } from '../actors/env.js';
import { answerChallenge, bareLogin, helloFrame } from '../actors/handshake.js';
import { decode, encode } from '../transport/codec.js';
import { PROTOCOL_VERSION, type MessageOf } from '../transport/messages.js';
import { CLOSE } from '../transport/types.js';
import { BrokenSeal, RawConn } from './fuzz-conn.js';
import {
  BAD_SHAPES,
  DECODE_LEVEL,
  Frame,
  GenContext,
  Json,
  JsonObject,
  MAX_FRAME,
  MIXED,
  MiB,
  PRINCIPAL,
  Rng,
  asBinary,
  connectionSeed,
  junkFrame,
  nextFrame,
  preview,
  stringify,
  text,
} from './fuzz-frames.js';
import { sleep } from './fuzz-procs.js';

// ---------------------------------------------------------------- the fuzz connections

type PreScenario =
  | 'junk-first'
  | 'bad-hello'
  | 'oversized-first'
  | 'half-handshake'
  | 'junk-after-challenge'
  | 'wrong-node-proof'
  | 'forged-credential'
  | 'replayed-auth'
  | 'wrong-principal-proof'
  | 'hello-twice'
  | 'silent'
  | 'invalid-utf8';

const PRE_SCENARIOS: ReadonlyArray<readonly [number, PreScenario]> = [
  [28, 'junk-first'],
  [12, 'bad-hello'],
  [2, 'oversized-first'],
  [12, 'half-handshake'],
  [10, 'junk-after-challenge'],
  [8, 'wrong-node-proof'],
  [4, 'forged-credential'],
  [4, 'replayed-auth'],
  [8, 'wrong-principal-proof'],
  [5, 'hello-twice'],
  [4, 'silent'],
  [3, 'invalid-utf8'],
];

export interface ConnPlan {
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
export function buildPlan(seed: number, frames: number, connections: number): { plan: ConnPlan[]; share: number } {
  const r = new Rng(seededRandom(seed));
  const plan: ConnPlan[] = [];
  for (let i = 0; i < connections; i++) {
    plan.push({
      index: i,
      kind: r.chance(0.3) ? 'pre' : 'post',
      scenario: r.weighted(PRE_SCENARIOS),
      style: r.weighted([
        [10, 'flood'],
        [25, 'sealed'],
        [65, 'mixed'],
      ] as const),
      budget: 0,
    });
  }
  const pre = plan.filter((p) => p.kind === 'pre').length;
  const posts = plan.length - pre;
  const share = posts > 0 ? Math.max(1, Math.round((frames - pre * 2) / posts)) : Math.max(1, frames);
  for (const p of plan)
    if (p.kind === 'post')
      p.budget =
        p.style === 'flood' ? Math.max(share, 110 + r.int(60)) : Math.max(1, Math.round(share * (0.5 + r.next())));
  return { plan, share };
}

/** What every connection adds to; one object, one event loop. */
export class Tallies {
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

export interface Run {
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
  return {
    rng: new Rng(seededRandom(connectionSeed(run.seed, p.index))),
    nextId: () => ++id,
    usedIds: new Set(),
    legit: run.legit,
    maxNestingBytes: run.maxNestingBytes,
  };
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
export async function preAuth(run: Run, p: ConnPlan): Promise<void> {
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
  const hello = (): boolean =>
    send({ bytes: encode(helloFrame(issueCredential(run.secret, 'node', node), nonce)), binary: true, kind: 'hello' });
  const gotChallenge = async () =>
    hello() &&
    (await conn.until(() => challenge !== undefined || refusedWith !== undefined, 3000)) &&
    challenge !== undefined;
  /** The replica owes a refusal: an error and a close (or a close alone, for a limit or a protocol error in `ws`). */
  const expectRefusal = async (what: string) => {
    if (!(await conn.until(() => conn.closed, 3000)) && !run.stopping) {
      t.preAuthUnrefused++;
      t.finding(
        `pre-auth #${p.index} (${p.scenario}): ${what} was neither refused nor closed within 3 s${refusedWith ? ` (got ${refusedWith})` : ''}; sent ${sentHere.map(preview).join(', ')}`,
      );
    }
  };
  const auth = (ch: MessageOf<'challenge'>, how: 'random' | 'forged' | 'replayed' | 'principal'): MessageOf<'auth'> => {
    const tr = transcript(node, nonce, ch.nonce, ch.replica);
    if (how === 'random') return { type: 'auth', proof: c.rng.str(43), principals: [] };
    if (how === 'forged')
      return {
        type: 'auth',
        proof: proofs.node(credentialKey(issueCredential(WRONG_SECRET, 'node', node)), tr),
        principals: [],
      };
    if (how === 'replayed') return run.lastAuth ?? { type: 'auth', proof: c.rng.str(43), principals: [] };
    // The node's own proof is right; the principal's is made with a key from another cluster.
    return answerChallenge(
      issueCredential(run.secret, 'node', node),
      [issueCredential(WRONG_SECRET, 'principal', PRINCIPAL)],
      nonce,
      ch,
    ).auth;
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
          t.finding(
            `pre-auth #${p.index}: a valid hello got no challenge within 3 s${refusedWith ? ` (got ${refusedWith})` : ''}`,
          );
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
        if ((await gotChallenge()) && challenge)
          send({ bytes: encode(auth(challenge, 'principal')), binary: true, kind: p.scenario });
        const answered = await conn.until(() => welcome !== undefined || conn.closed, 3000);
        if (!run.stopping && (!answered || !welcome?.refused?.includes(PRINCIPAL))) {
          t.preAuthUnrefused++;
          t.finding(
            `pre-auth #${p.index} (${p.scenario}): a wrong principal proof was not refused in the welcome${refusedWith ? ` (got ${refusedWith})` : ''}; sent ${sentHere.map(preview).join(', ')}`,
          );
        }
        return;
      }
      default: {
        const how =
          p.scenario === 'wrong-node-proof' ? 'random' : p.scenario === 'forged-credential' ? 'forged' : 'replayed';
        if ((await gotChallenge()) && challenge)
          send({ bytes: encode(auth(challenge, how)), binary: true, kind: p.scenario });
        return await expectRefusal(`an auth with a wrong proof (${p.scenario})`);
      }
    }
  } finally {
    finish(run, conn);
  }
}

/** Authenticate as `node` proving PRINCIPAL (asking for sealed frames or not); the welcome, or why not (a limit's refusal or a failure). */
async function login(
  run: Run,
  conn: RawConn,
  node: string,
  nonce: string,
  seal: boolean,
): Promise<{ ok: true } | { ok: false; limit: boolean; why: string }> {
  const l = bareLogin(
    issueCredential(run.secret, 'node', node),
    [issueCredential(run.secret, 'principal', PRINCIPAL)],
    nonce,
    seal,
  );
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
  const limit =
    refusal === undefined
      ? !heard && conn.closeCode !== CLOSE.AUTH_FAILED
      : refusal !== 'AUTH_FAILED' && !refusal.startsWith('reply');
  return { ok: false, limit, why: refusal ?? `closed ${conn.closeCode}` };
}

/** One authenticated session: waves of malformed frames, each wave answered before the next. */
export async function postAuth(run: Run, p: ConnPlan): Promise<void> {
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
      t.finding(
        `session #${p.index}: not authenticated: ${in_.why}${in_.limit ? ' (counted as refused by limit)' : ''}`,
      );
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
    if (answers < sent && conn.isOpen)
      await conn.until(() => answers >= sent, run.stopping ? 500 : run.answerTimeoutMs);
    t.answered += Math.min(answers, sent);
    const missing = Math.max(0, sent - answers);
    // Closed by the replica with a code (4002 after too many bad frames, or a limit): frames in flight are absorbed.
    if (conn.closed && !conn.byUs && conn.closeCode !== 1006 && conn.closeCode !== 1005) t.absorbedByClose += missing;
    else if (missing > 0 && !run.stopping) {
      t.unanswered += missing;
      t.finding(
        `session #${p.index}: ${missing} of ${sent} frames unanswered (${conn.closed ? `closed ${conn.closeCode}` : 'connection open'}); expected ${JSON.stringify(expected)}, got ${JSON.stringify(got)}`,
      );
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
export async function checkAlive(url: string, secret: string): Promise<{ ok: boolean; detail: string }> {
  const conn = await RawConn.connect(url, 5000);
  if (typeof conn === 'string') return { ok: false, detail: `cannot connect: ${conn}` };
  try {
    const nonce = randomBytes(16).toString('base64url');
    const l = bareLogin(
      issueCredential(secret, 'node', 'fuzz-check'),
      [issueCredential(secret, 'principal', PRINCIPAL)],
      nonce,
    );
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
    return pong
      ? { ok: true, detail: 'a fresh session was welcomed and its ping answered' }
      : {
          ok: false,
          detail: welcomed
            ? 'welcomed, but no pong within 5 s'
            : `no welcome within 5 s${conn.closed ? ` (closed ${conn.closeCode})` : ''}`,
        };
  } finally {
    conn.terminate();
  }
}
