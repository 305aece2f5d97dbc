/**
 * Flow control and liveness of the replica's sessions: requests counted in flight (and their bytes)
 * until answered, reading stopped while too much of a session is in flight or waits to be sent and
 * started again under half of each limit, silent sessions dropped, and a lost session's handles
 * kept (orphans) for their hold period. Pure: the bytes waiting on a connection come from the shell
 * (input `buffered`, asked for with the `buffered` intent, and with `drain` and `reap-tick`).
 */
import { REPLICA_SILENCE_INTERVALS } from '../transport/messages.js';
import type { HandleRef } from '../store/types.js';
import { ReplicaBase, type Session } from './replica-base.js';
import type { StoreFailure } from './replica-intents.js';

export abstract class ReplicaFlow extends ReplicaBase {
  /** Count a request of `bytes` in flight; `end` with the same bytes once it is answered. */
  protected begin(s: Session, bytes: number): void {
    s.inflight++;
    s.inflightBytes += bytes;
    this.flow(s);
  }

  protected end(s: Session, bytes: number, type: string, t0: number): void {
    s.inflight--;
    s.inflightBytes -= bytes;
    if (this.cfg.observed) this.out.push({ kind: 'observe', what: 'request', type, ms: this.now - t0 });
    // The answer just sent adds to what waits: flow is decided once the shell says how much.
    this.checkBuffered(s);
  }

  /** The shell's answer to a `buffered` intent. */
  protected onBuffered(conn: number, bytes: number): void {
    const s = this.conns.get(conn)?.session;
    if (!s) return;
    s.buffered = bytes;
    this.flow(s);
  }

  /** The peer took what was buffered: it is alive. */
  protected onDrain(conn: number, buffered: number): void {
    const s = this.conns.get(conn)?.session;
    if (!s) return;
    s.lastHeardMs = this.now;
    s.buffered = buffered;
    this.flow(s);
  }

  /**
   * Backpressure: stop reading a session while too much of it is in flight or too many of its replies
   * wait to be sent, and read again once it is under half of each limit.
   */
  protected flow(s: Session): void {
    const maxN = this.cfg.maxInflightPerSession;
    const maxBytes = this.cfg.maxInflightBytesPerSession;
    const maxSend = this.maxSendBytes;
    if (!s.paused) {
      if (s.inflight < maxN && s.inflightBytes < maxBytes && s.buffered < maxSend) return;
      s.paused = true;
      this.stats.backpressure++;
      this.out.push({ kind: 'pause-reading', conn: s.conn });
      return;
    }
    if (s.inflight <= maxN / 2 && s.inflightBytes <= maxBytes / 2 && s.buffered <= maxSend / 2) {
      s.paused = false;
      // Silence while the replica was not reading was the replica's doing.
      s.lastHeardMs = this.now;
      // What arrived meanwhile first, in order, until a limit is reached again.
      while (!s.paused && s.held.length > 0 && this.sessions.get(s.id) === s) this.onFrame(s, s.held.shift()!);
      if (!s.paused) this.out.push({ kind: 'resume-reading', conn: s.conn });
    }
  }

  protected reapSilent(buffered: ReadonlyMap<number, number>): void {
    const deadline = this.now - REPLICA_SILENCE_INTERVALS * this.cfg.heartbeatIntervalMs;
    for (const s of [...this.sessions.values()]) {
      // A session whose reading this replica paused while serving it is not silent; one that does
      // not read its replies is (its peer is gone or stuck), and is dropped like any silent one.
      if (s.paused && s.inflight > 0) continue;
      // Neither is one that takes its replies, however slowly (the replica reads nothing meanwhile).
      const waiting = buffered.get(s.conn) ?? 0;
      s.buffered = waiting;
      if (s.paused && waiting < s.lastBuffered) s.lastHeardMs = this.now;
      s.lastBuffered = waiting;
      if (s.lastHeardMs < deadline) this.loseSession(s, 'heartbeat timeout', true);
    }
  }

  protected loseSession(s: Session, why: string, keepOrphans: boolean): void {
    if (!this.sessions.delete(s.id)) return;
    this.log('info', 'session lost', { session: s.id, node: s.node, handles: s.handles.size, why });
    this.out.push({ kind: 'terminate', conn: s.conn });
    const held: HandleRef[] = [];
    for (const [key, h] of s.handles) {
      if (h.mode === 'write') held.push({ target: h.target, requestId: h.requestId });
      this.records.step(h, { type: 'SESSION_LOST' });
      if (keepOrphans) this.records.orphan(key, h);
      else this.records.drop(h);
    }
    s.handles.clear();
    // The hold period starts now: the lock lasts holdMs more, then lapses.
    if (held.length > 0 && this.dismounted === 'no') {
      this.call({ op: 'renew', session: s.id, refs: held, leaseMs: this.cfg.holdMs }, (a) => {
        if (!a.ok)
          this.log('warn', 'could not start the hold period; locks lapse at their lease', {
            err: describe(a.failure),
            session: s.id,
          });
      });
    }
  }
}

/** A store failure as one line for the log. */
export function describe(f: StoreFailure): string {
  return f.kind === 'internal'
    ? String(f.error)
    : f.kind === 'unavailable'
      ? `StoreUnavailableError: ${f.message}`
      : f.message;
}
