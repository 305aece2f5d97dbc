/**
 * A replica's side of opening a session: a connection is accepted (within the limit of peers not yet
 * authenticated) and has the hello timeout to authenticate; `hello` is answered with a nonce and the
 * proof that this replica holds the node's key; `auth` must prove the node's key (and each principal
 * it speaks for: a wrong one is refused alone); then the session, and its `welcome`. A refusal is one
 * coded error and a close. Later `prove` frames add principals to a running session.
 */
import type { ErrorCode } from '../errors.js';
import type { Decoded } from '../transport/codec.js';
import type { MessageOf } from '../transport/messages.js';
import { CLOSE } from '../transport/types.js';
import { proofMatches, proofs, sessionKey, transcript } from './proofs.js';
import type { Handshake, Session } from './replica-base.js';
import { ReplicaFlow } from './replica-flow.js';

/** Principals one session may prove (in `auth` and later `prove` frames). */
export const MAX_PRINCIPALS_PER_SESSION = 256;

export abstract class ReplicaHandshake extends ReplicaFlow {
  protected accept(conn: number, remote: string): void {
    if (this.pending.size >= this.cfg.maxUnauthenticated) {
      this.warn(
        'too many unauthenticated',
        { remote, pending: this.pending.size },
        'dropped a connection: too many peers not yet authenticated (maxUnauthenticated)',
      );
      return void this.out.push({ kind: 'terminate', conn });
    }
    this.pending.add(conn);
    // A peer that has not authenticated within the hello timeout is dropped at once: a close
    // handshake would wait on a peer that may never answer.
    const timer = this.arm({ kind: 'hello', conn }, this.cfg.helloTimeoutMs, () => {
      if (this.pending.delete(conn)) this.out.push({ kind: 'terminate', conn });
    });
    this.conns.set(conn, { timer, hs: undefined, session: undefined, refused: false, remote });
  }

  protected closed(conn: number): void {
    const c = this.conns.get(conn);
    this.pending.delete(conn);
    if (!c) return;
    this.conns.delete(conn);
    this.cancel(c.timer);
    if (c.session) this.loseSession(c.session, 'connection closed', true);
  }

  protected frame(conn: number, frame: Decoded): void {
    const c = this.conns.get(conn);
    if (!c) return;
    const session = c.session;
    if (session) {
      session.lastHeardMs = this.now;
      if (session.paused || session.held.length > 0) session.held.push(frame);
      else {
        this.onFrame(session, frame);
        // Any answer (a pong, a refusal) adds to what waits to be sent: a peer that does not read
        // stops being read whatever it sends.
        this.checkBuffered(session);
      }
      return;
    }
    if (c.refused) return;
    const step = c.hs ? this.authenticate(conn, c.remote, c.hs, frame) : this.hello(conn, c.remote, frame);
    if (step === undefined) {
      c.refused = true;
      this.pending.delete(conn);
      this.cancel(c.timer);
    } else if ('id' in step) {
      c.session = step;
      this.cancel(c.timer);
    } else c.hs = step;
  }

  /** Refuse a peer during the handshake: one coded error, then the connection goes. */
  private refuse(
    conn: number,
    remote: string,
    message: string,
    why: string,
    fields: Record<string, unknown> = {},
    code: ErrorCode = 'AUTH_FAILED',
  ): undefined {
    this.warn('refused peer', { remote, ...fields }, `refused a peer: ${why}`);
    this.reply(conn, undefined, code, message);
    this.out.push({ kind: 'close', conn, code: CLOSE.AUTH_FAILED, reason: why });
    // A peer that does not answer the close is dropped.
    this.arm({ kind: 'terminate', conn }, 1000, () => this.out.push({ kind: 'terminate', conn }));
    return undefined;
  }

  /** `hello`: answer with a nonce and the proof that this replica holds the node's key. */
  private hello(conn: number, remote: string, frame: Decoded): Handshake | undefined {
    if (!frame.ok || frame.msg.type !== 'hello') {
      const got = frame.ok ? frame.msg.type : `${frame.code}: ${frame.message}`;
      return this.refuse(
        conn,
        remote,
        `the first message must be hello (protocol version 3); got ${got}`,
        'expected hello',
      );
    }
    const node = frame.msg.node;
    const key = this.keyring.node(node);
    const nonce = this.cfg.newId();
    const t = transcript(node, frame.msg.nonce, nonce, this.cfg.id);
    this.send(conn, { type: 'challenge', replica: this.cfg.id, nonce, proof: proofs.replica(key, t) });
    return { node, key, transcript: t };
  }

  /** `auth`: the node's proof, and one per principal it speaks for; then the session. */
  private authenticate(conn: number, remote: string, hs: Handshake, frame: Decoded): Session | undefined {
    if (!frame.ok || frame.msg.type !== 'auth')
      return this.refuse(conn, remote, 'expected auth after challenge', 'expected auth', { node: hs.node });
    const seal = frame.msg.seal === true;
    if (!proofMatches(proofs.node(hs.key, hs.transcript, seal), frame.msg.proof)) {
      return this.refuse(conn, remote, `wrong credential for node ${hs.node}`, 'wrong node credential', {
        node: hs.node,
      });
    }
    // A wrong principal proof refuses that principal only (the node is told in the welcome): one
    // stale credential must not keep a node's every application from its storage.
    const principals = new Set<string>();
    const refused: string[] = [];
    for (const p of frame.msg.principals) {
      if (proofMatches(proofs.principal(this.keyring.principal(p.name), p.name, hs.transcript), p.proof))
        principals.add(p.name);
      else refused.push(p.name);
    }
    if (refused.length > 0)
      this.warn('wrong principal proof', { node: hs.node, principals: refused }, 'wrong principal credential');
    const maxSessions = this.cfg.maxSessionsPerNode;
    let ofNode = 0;
    for (const other of this.sessions.values()) if (other.node === hs.node) ofNode++;
    if (ofNode >= maxSessions) {
      return this.refuse(
        conn,
        remote,
        `node ${hs.node} already holds ${ofNode} sessions on ${this.cfg.id} (maxSessionsPerNode ${maxSessions}); retry once one has ended`,
        'too many sessions of one node',
        { node: hs.node },
        'UNAVAILABLE',
      );
    }
    this.pending.delete(conn);
    this.out.push({ kind: 'trust', conn });
    // The welcome and every frame after it are sealed, if the node asked (its proof covers the wish).
    if (seal) this.out.push({ kind: 'protect', conn, key: sessionKey(hs.key, hs.transcript) });
    const session: Session = {
      id: this.cfg.newId(),
      node: hs.node,
      principals,
      transcript: hs.transcript,
      conn,
      handles: new Map(),
      lastHeardMs: this.now,
      badFrames: 0,
      seen: new Set(),
      inflight: 0,
      inflightBytes: 0,
      paused: false,
      buffered: 0,
      lastBuffered: 0,
      held: [],
    };
    this.sessions.set(session.id, session);
    this.stats.sessions++;
    this.send(conn, {
      type: 'welcome',
      session: session.id,
      replica: this.cfg.id,
      heartbeatIntervalMs: this.cfg.heartbeatIntervalMs,
      available: this.dismounted === 'no',
      ...(refused.length > 0 ? { refused } : {}),
    });
    this.log('info', 'session opened', { session: session.id, node: session.node, principals: principals.size });
    return session;
  }

  /** `prove` on a running session: one more principal its opens may name. */
  protected onProve(s: Session, msg: MessageOf<'prove'>): void {
    if (
      !proofMatches(proofs.principal(this.keyring.principal(msg.principal), msg.principal, s.transcript), msg.proof)
    ) {
      this.warn(
        'wrong principal proof',
        { session: s.id, node: s.node, principal: msg.principal },
        'wrong principal credential',
      );
      this.countBad(s);
      return this.send(s.conn, {
        type: 'error',
        code: 'AUTH_FAILED',
        message: `wrong credential for principal ${msg.principal}`,
        retryable: false,
        principal: msg.principal,
      });
    }
    if (!s.principals.has(msg.principal) && s.principals.size >= MAX_PRINCIPALS_PER_SESSION) {
      return this.reply(
        s.conn,
        undefined,
        'INVALID_ARGUMENT',
        `a session may prove at most ${MAX_PRINCIPALS_PER_SESSION} principals`,
      );
    }
    s.principals.add(msg.principal);
  }

  /** One more bad frame (or refused proof, or message a replica does not take) on this session. */
  protected countBad(s: Session): void {
    if (++s.badFrames >= this.cfg.maxBadFrames)
      this.out.push({ kind: 'close', conn: s.conn, code: CLOSE.PROTOCOL, reason: 'too many bad frames' });
  }
}
