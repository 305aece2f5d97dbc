/**
 * A node agent's side of opening a session: connect, say hello with a fresh nonce, check the
 * replica's proof that it knows this node's key (an impostor fails here, having learnt two nonces),
 * answer with the node's proof and one per principal, wait for `welcome` (or a refusal), and adopt
 * the replica's heartbeat interval unless the node insists on another one.
 */
import { SafeResumeError, isErrorCode } from '../errors.js';
import type { Connected } from '../machines/node-session.js';
import type { Decoded } from '../transport/codec.js';
import { PROTOCOL_VERSION, type Message, type MessageOf } from '../transport/messages.js';
import type { Connection, Transport } from '../transport/types.js';
import { credentialKey, proofMatches, proofs, sessionKey, transcript, type Credential } from './auth.js';
import type { ActorClock } from './env.js';

export interface HandshakeOptions {
  transport: Transport;
  /** This node's credential. */
  credential: Credential;
  /** The principals to prove on the new session. */
  principals: Credential[];
  /** A fresh random nonce (the actor's `newId`). */
  nonce: string;
  clock: ActorClock;
  timeoutMs: number;
  /** The interval the node insists on; a replica advertising another one is refused. */
  heartbeatIntervalMs: number | undefined;
}

export interface SessionCallbacks {
  /**
   * Called at once when the welcome arrives, before any later frame of the connection, with what a
   * later principal's proof is made over.
   */
  welcomed(conn: Connection, proof: SessionProof): void;
  /** Every frame after the welcome. */
  frame(conn: Connection, frame: Decoded): void;
  /** The connection closed after the welcome. */
  closed(conn: Connection, reason: string): void;
}

/** What a session's later `prove` frames are made over, which principals it has proven, and which the replica refused. */
export interface SessionProof {
  transcript: string;
  proven: Set<string>;
  refused: string[];
}

/** Principals proven in `auth` itself; more are proven with `prove` frames once the session is up. */
export const MAX_AUTH_PRINCIPALS = 16;

/** The `prove` frame for a principal on a session. */
export function proveFrame(p: Credential, s: SessionProof) {
  return { type: 'prove' as const, principal: p.name, proof: proofs.principal(credentialKey(p), p.name, s.transcript) };
}

/**
 * The node's answer to a challenge: its proof and one per principal, or an AUTH_FAILED error if the
 * challenger does not hold the cluster key. Bare protocol clients (tests, benchmarks, the fuzzer)
 * use it with `hello` frames of their own.
 */
export function answerChallenge(
  credential: Credential,
  principals: Credential[],
  nonce: string,
  c: MessageOf<'challenge'>,
  seal = false,
): { auth: MessageOf<'auth'>; session: SessionProof; key: Buffer } {
  const key = credentialKey(credential);
  const t = transcript(credential.name, nonce, c.nonce, c.replica);
  if (!proofMatches(proofs.replica(key, t), c.proof)) {
    throw new SafeResumeError(
      'AUTH_FAILED',
      `AUTH_FAILED: the peer calling itself ${c.replica} did not prove it holds this node's key (derived from the cluster key): it is not a replica of this cluster, or this node's credential is not this cluster's`,
    );
  }
  const auth: MessageOf<'auth'> = {
    type: 'auth',
    proof: proofs.node(key, t, seal),
    principals: principals.map((p) => ({ name: p.name, proof: proofs.principal(credentialKey(p), p.name, t) })),
  };
  if (seal) auth.seal = true;
  return {
    auth,
    session: { transcript: t, proven: new Set(principals.map((p) => p.name)), refused: [] },
    key: sessionKey(key, t),
  };
}

export function helloFrame(credential: Credential, nonce: string): MessageOf<'hello'> {
  return { type: 'hello', v: PROTOCOL_VERSION, node: credential.name, nonce };
}

export async function handshake(url: string, o: HandshakeOptions, on: SessionCallbacks): Promise<Connected> {
  const conn = await o.transport.connect(url, { timeoutMs: o.timeoutMs });
  return new Promise<Connected>((resolve, reject) => {
    const timer = o.clock.setTimeout(() => {
      conn.terminate();
      reject(new Error(`no welcome from ${url}`));
    }, o.timeoutMs);
    let session: SessionProof | undefined;
    let welcomed = false;
    const refuse = (err: Error) => {
      o.clock.clearTimeout(timer);
      reject(err);
      conn.terminate();
    };
    conn.onClose((info) => {
      o.clock.clearTimeout(timer);
      if (!welcomed) reject(new Error(`${url} closed the connection: ${info.reason || info.code}`));
      else on.closed(conn, info.reason || `closed (${info.code})`);
    });
    conn.onFrame((frame) => {
      if (welcomed) return on.frame(conn, frame);
      if (!frame.ok)
        return refuse(
          new SafeResumeError(
            'AUTH_FAILED',
            `AUTH_FAILED: ${url} answered the handshake with a bad frame (${frame.code}: ${frame.message})`,
          ),
        );
      const msg = frame.msg;
      if (msg.type === 'error')
        return refuse(
          new SafeResumeError(isErrorCode(msg.code) ? msg.code : 'INTERNAL', `${msg.code}: ${msg.message}`),
        );
      if (msg.type === 'challenge' && !session) {
        try {
          const answer = answerChallenge(o.credential, o.principals.slice(0, MAX_AUTH_PRINCIPALS), o.nonce, msg, true);
          session = answer.session;
          conn.send(answer.auth);
          // Every later frame, both ways, is sealed (unless TLS already protects the link).
          conn.protect(answer.key, 'client');
        } catch (err) {
          refuse(
            err instanceof SafeResumeError
              ? new SafeResumeError('AUTH_FAILED', `${err.message} (${url})`)
              : (err as Error),
          );
        }
        return;
      }
      if (msg.type !== 'welcome' || !session)
        return refuse(new SafeResumeError('AUTH_FAILED', `AUTH_FAILED: ${url} sent ${msg.type} during the handshake`));
      const want = o.heartbeatIntervalMs;
      if (want !== undefined && want !== msg.heartbeatIntervalMs) {
        return refuse(
          new SafeResumeError(
            'INVALID_ARGUMENT',
            `INVALID_ARGUMENT: ${url} beats every ${msg.heartbeatIntervalMs} ms, this node insists on ${want} ms (heartbeatIntervalMs)`,
          ),
        );
      }
      welcomed = true;
      o.clock.clearTimeout(timer);
      for (const r of msg.refused ?? []) {
        session.proven.delete(r);
        session.refused.push(r);
      }
      on.welcomed(conn, session);
      resolve({
        session: msg.session,
        replica: msg.replica,
        heartbeatIntervalMs: msg.heartbeatIntervalMs,
        available: msg.available,
      });
    });
    conn.send(helloFrame(o.credential, o.nonce));
  });
}

/**
 * A bare protocol client's side of the handshake (tests, benchmarks, the fuzzer): send `hello`, and
 * pass every frame to `answer`, which returns the `auth` to send when the challenge arrives.
 */
export function bareLogin(
  credential: Credential,
  principals: Credential[],
  nonce: string,
  seal = false,
): { hello: MessageOf<'hello'>; answer(msg: Message): MessageOf<'auth'> | undefined; key(): Buffer | undefined } {
  let key: Buffer | undefined;
  return {
    hello: helloFrame(credential, nonce),
    answer(msg) {
      if (key || msg.type !== 'challenge') return undefined;
      const a = answerChallenge(credential, principals, nonce, msg, seal);
      key = a.key;
      return a.auth;
    },
    /** The session key, once the challenge was answered (to seal frames when `seal` was asked). */
    key: () => key,
  };
}
