/**
 * The node agent's core, the replica's answers: opens granted, resumes granted or denied (and what a
 * grant settles and replays), writes and reads answered, refusals, revocations. Pure, like the core
 * (core/agent.ts).
 */
import { isErrorCode, type ErrorCode, type InvalidationReason } from '../errors.js';
import type { Message, MessageOf } from '../transport/messages.js';
import { filler, type CoreHandle } from './handle.js';
import { AgentSession } from './agent-session.js';
import { afterGrant } from './resume.js';

/** SEQ_GAP answers one write may get before the session is dropped and everything replayed in order. */
const MAX_RESENDS = 8;

export abstract class AgentReplies extends AgentSession {
  // ---- Frames from the replica ----

  protected frame(msg: Message): void {
    switch (msg.type) {
      case 'opened': {
        const p = this.take(msg.id);
        if (p?.kind === 'open' && p.h.state === 'opening') this.grant(p.h, msg.lastSeq, msg.version, msg.size ?? 0);
        return;
      }
      case 'resumed':
        return this.resumed(msg);
      case 'written':
      case 'data':
      case 'kept':
        return this.answered(msg);
      case 'closed': {
        const p = this.take(msg.id);
        if (p?.kind === 'close' && p.h.state === 'closing') this.finishClose(p.h);
        return;
      }
      case 'access': {
        const p = this.take(msg.id);
        if (p?.kind === 'access')
          this.out.push({
            kind: 'access-done',
            call: p.call,
            ok: true,
            access: { owner: msg.owner, grants: msg.grants },
          });
        return;
      }
      case 'revoked': {
        const h = this.handles.get(msg.requestId);
        if (h && h.target === msg.target) this.lose(h, 'REVOKED', msg.reason, msg.lastSeq);
        return;
      }
      case 'error':
        return this.refused(msg);
      default:
        this.log('warn', 'unexpected message from replica', { type: msg.type });
    }
  }

  private resumed(msg: MessageOf<'resumed'>): void {
    const p = this.take(msg.id);
    if (!p || (p.kind !== 'resume' && p.kind !== 'open')) return;
    const hs = p.kind === 'resume' ? p.hs : [p.h];
    let granted = 0;
    msg.results.forEach((r, i) => {
      const h = hs[i];
      if (!h || h.requestId !== r.requestId) return;
      if (this.handles.get(h.requestId) !== h) {
        // Gone while its resume was in flight. Closed or timed out: a grant it no longer wants would
        // hold the lock for as long as the session lives, so let it go. An application that died
        // keeps it: it comes back for it with the same requestId.
        if (r.granted && (h.state === 'closed' || h.state === 'invalidated'))
          this.send({ type: 'close', id: this.nextId++, target: h.target, requestId: h.requestId });
        return;
      }
      // A handle paused again after this resume was sent waits for the next round.
      if (h.state !== (p.kind === 'resume' ? 'resuming' : 'opening')) return;
      if (r.granted) {
        granted++;
        return this.grant(h, r.lastSeq ?? 0, r.version, r.size ?? 0);
      }
      // Denied as late, though sent on this session: this node's counter fell behind its own record
      // (its count of starts could not be kept). Count on from the record's and ask again.
      // (Every answer taken here is to a request of this session: those of a session left are dropped.)
      if (r.heldEpoch !== undefined) {
        this.countFrom(r.heldEpoch);
        this.log('warn', 'hand-over counter behind the store; resuming again', {
          target: h.target,
          requestId: h.requestId,
          heldEpoch: r.heldEpoch,
        });
        if (h.state === 'opening') h.pending = 0;
        else this.to(h, 'PAUSED');
        return this.retryLater();
      }
      const reason = r.reason ?? 'MODIFIED';
      if (h.state === 'opening')
        return this.failOpen(
          h,
          r.code === 'FORBIDDEN' ? 'FORBIDDEN' : reason,
          `resume of ${h.target} denied: ${r.code ?? reason}`,
        );
      h.version = r.version;
      if (r.changed) h.changed = { changed: r.changed, coarse: r.coarse === true };
      this.lose(h, 'DENIED', reason, r.lastSeq);
    });
    if (p.kind === 'resume') this.log('info', 'handles resumed', { granted, of: hs.length });
  }

  private grant(h: CoreHandle, lastSeq: number, version: number, size: number): void {
    const opening = h.state === 'opening';
    h.size = size;
    h.pending = 0;
    h.version = version;
    // A takeover is kept as one until the store grants it (a restart in between takes over again). A
    // reader is kept again with the version granted whenever the file does not hold it for sure: an
    // open was kept before the store answered, with the version it had then (0 for a fresh open); a
    // resume carries the version the reader last read, which a read answer only asked to keep later
    // (still pending, or failed). The reclaim after a restart resumes with the kept version, and this
    // keep is on disk before the open or the resume is acknowledged (the shell fsyncs a step's keeps
    // before it carries the rest). A writer resumes by its instance, not a version.
    if (h.takeover || (h.mode === 'read' && (h.keptVersion !== version || this.keepingLater.has(h)))) this.keep(h);
    h.takeover = false;
    h.how = 'resume';
    this.to(h, opening ? 'OPENED' : 'GRANTED');
    if (!opening) this.out.push({ kind: 'pause-timer', h, on: false });
    const { applied, replay } = afterGrant(h, lastSeq);
    for (const op of applied) this.settle({ op, ok: true, value: { version } });
    const ops = replay;
    if (opening) this.out.push({ kind: 'opened', h });
    else
      this.log('debug', 'handle resumed', {
        app: h.app,
        target: h.target,
        requestId: h.requestId,
        lastSeq,
        replayed: ops.length,
      });
    // Granted, but the replica said its store went away before this answer arrived (it waited for a
    // group commit): the handle is away like the others, and resumed with them.
    if (!this.session) return void this.pause(h);
    for (const op of ops) this.sendOp(h, op);
  }

  private answered(msg: MessageOf<'written' | 'data' | 'kept'>): void {
    const p = this.take(msg.id);
    if (p?.kind !== 'op') return;
    const { h, op } = p;
    const i = h.ops.indexOf(op);
    if (i < 0) return;
    h.ops.splice(i, 1);
    const read = msg.type !== 'written';
    // A writer has seen the versions its own writes made: a denial lists what changed after them.
    if (read || msg.version > h.version) h.version = msg.version;
    if (op.settle)
      this.settle({
        op,
        ok: true,
        value:
          msg.type === 'data'
            ? { version: msg.version, data: msg.data }
            : msg.type === 'kept'
              ? { version: msg.version, kept: msg.kept, end: msg.end }
              : { version: msg.version },
      });
    // A reader that read a newer version resumes with it, and so should its reclaim after a restart:
    // keep it, but later, without holding back this answer (no fsync on the read's path, and none at
    // all while the version stays the same; a burst of reads leaves one keep pending, which writes the
    // newest version). A keep that has not reached the disk when the node crashes costs liveness only,
    // never safety: the reclaim carries the older version, which the store grants only if nothing was
    // written after it (then nothing changed under the reader at all), and denies MODIFIED otherwise,
    // so the reader reloads; an older version never makes the store grant what it should deny. The
    // next resume's grant keeps the version before the resume is acknowledged (see grant).
    // Only for a handle still open: a read answered while it closes must not bring its entry back.
    if (read && h.mode === 'read' && h.state === 'active' && h.keptVersion !== h.version) this.keepLater(h);
  }

  private refused(msg: MessageOf<'error'>): void {
    const p = msg.id === undefined ? undefined : this.take(msg.id);
    const code: ErrorCode = isErrorCode(msg.code) ? msg.code : 'INTERNAL';
    if (!p) return this.log('warn', 'error from replica', { code, message: msg.message });
    if (p.kind === 'access')
      return void this.out.push({ kind: 'access-done', call: p.call, ok: false, code, message: msg.message });
    if (p.kind === 'resume') {
      // The whole resume failed (the store went away): the handles wait for the next round.
      for (const h of p.hs) if (h.state === 'resuming') this.pause(h);
      return this.retryLater();
    }
    const h = p.h;
    if (this.handles.get(h.requestId) !== h) return;
    if (p.kind === 'open') {
      h.pending = 0;
      // LOCKED is retryable for the application (wait and retry), not something to retry blindly here.
      if (code === 'UNAVAILABLE') return this.retryLater();
      return this.failOpen(h, code, msg.message);
    }
    if (p.kind === 'close') return this.finishClose(h);
    const op = p.op;
    // The store answered this copy with a refusal: it was not applied (and an older copy, on a session
    // since lost, was either acknowledged by the grant that replayed it or never applied).
    // Unless the replica says the store may still apply it: a commit sent and never answered.
    const unknown = msg.outcome === 'unknown';
    if (op.inflight === msg.id) {
      op.inflight = 0;
      if (!unknown) op.sent = false;
    }
    if (code === 'SEQ_GAP' && h.state === 'active') {
      // An earlier seq had not arrived (a filler or a replay is on its way): send this one again after it.
      if (++op.resends > MAX_RESENDS)
        return void this.out.push({
          kind: 'drop-session',
          why: `write seq ${op.seq} of ${h.target} kept arriving before its predecessor`,
        });
      return this.sendOp(h, op);
    }
    if (msg.retryable) {
      // Kept; the handle pauses and is resumed (and the operation replayed) in the next round.
      this.pause(h);
      return this.retryLater();
    }
    if (code === 'MODIFIED' || code === 'SUPERSEDED' || code === 'NOT_OPEN') {
      const reason: InvalidationReason = code === 'NOT_OPEN' ? 'CLOSED_BY_STORAGE' : code;
      this.remove(h, op);
      // The refused operation itself was not applied, and its session is fenced for good.
      if (op.settle) this.settle({ op, ok: false, code: reason, message: `${h.target}: ${msg.message}` });
      return this.lose(h, h.state === 'active' ? 'REVOKED' : 'DENIED', reason, msg.lastSeq);
    }
    // Refused on its own (a bad argument, a size limit): it fails alone. A write's seq goes to a
    // filler, so the next write follows in order (L3) and this one can never be applied later (S5).
    // One the store may still apply (an internal error after the store took it) is not known refused.
    if (op.settle) {
      if (unknown && op.kind === 'write' && op.seq > 0)
        this.settle({
          op,
          ok: false,
          code: 'OUTCOME_UNKNOWN',
          reason: code,
          message: `${msg.message}; the write was sent and may have been applied`,
        });
      else this.settle({ op, ok: false, code, message: msg.message });
    }
    const i = h.ops.indexOf(op);
    if (op.kind !== 'write' || i < 0) return this.remove(h, op);
    const f = filler(op.seq);
    h.ops[i] = f;
    if (h.state === 'active') this.sendOp(h, f);
  }
}
