/** The pre-authentication fuzz connections: garbage, a broken handshake, or nothing; then dropped. */
import { credentialKey, issueCredential, proofs, transcript } from '../actors/auth.js';
import { seededIds } from '../actors/env.js';
import { answerChallenge, helloFrame } from '../actors/handshake.js';
import { decode, encode } from '../transport/codec.js';
import { PROTOCOL_VERSION, type MessageOf } from '../transport/messages.js';
import {
  BAD_SHAPES,
  Frame,
  GenContext,
  Json,
  JsonObject,
  MAX_FRAME,
  MiB,
  PRINCIPAL,
  junkFrame,
  preview,
  stringify,
  text,
} from './fuzz-frames.js';
import { sleep } from './fuzz-procs.js';
import { ConnPlan } from './fuzz-plan.js';
import { Run, WRONG_SECRET, bump, context, finish, open, sendCounted } from './fuzz-session.js';

/** A `hello` with one field wrong; some odd shapes are valid names ('P', 64 x's), so drawn until the codec refuses it. */
export function badHello(c: GenContext, node: string, nonce: string): Frame {
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
