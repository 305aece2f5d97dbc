/**
 * The fuzz connections after the handshake: waves of malformed frames on an authenticated session, and
 * the check that a fresh session is still served (the plan is fuzz-plan.ts, the connections that never
 * authenticate fuzz-pre-auth.ts).
 */
import { randomBytes } from 'node:crypto';
import { issueCredential } from '../actors/auth.js';
import { seededIds } from '../actors/env.js';
import { bareLogin } from '../actors/handshake.js';
import { CLOSE } from '../transport/types.js';
import { BrokenSeal, RawConn } from './fuzz-conn.js';
import { DECODE_LEVEL, MIXED, PRINCIPAL, asBinary, nextFrame } from './fuzz-frames.js';
import { ConnPlan } from './fuzz-plan.js';
import { MAX_WAVE, Run, UNSOLICITED, bump, context, finish, open, sendCounted } from './fuzz-session.js';

export { buildPlan, Tallies, type ConnPlan } from './fuzz-plan.js';
export { MAX_WAVE, type Run } from './fuzz-session.js';
export { preAuth } from './fuzz-pre-auth.js';

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
