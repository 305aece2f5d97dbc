/**
 * Readers, as the history checker follows them (S1 and L1): the versions the store granted each reader and
 * its node is proven to have kept, and the readers' needless denials, held until their application is told.
 */
import type { TargetState } from './checker-target.js';
import type { Guarantee } from './guarantees.js';
import type { HistoryEvent } from './history.js';

type Ev<K extends HistoryEvent['kind']> = Extract<HistoryEvent, { kind: K }>;

export class Readers {
  /**
   * Per target and read requestId: the version the store granted its latest open with, the version
   * it granted its latest resume with, and the newest version the node is proven to have received
   * and kept (see readDenied). From then on the node owes that version to every resume of the
   * requestId, a reclaim after a restart included.
   */
  private readonly readers = new Map<string, { opened?: number; resumed?: number; told?: number }>();
  /** Readers' denials judged needless, by target, requestId and session, until their application is told (see readDenied). */
  private readonly denials = new Map<string, { e: Ev<'deny'>; message: string }>();

  constructor(
    /** Record a violation (the checker's). */
    private readonly violate: (guarantee: Guarantee, e: HistoryEvent, tgt: string | undefined, message: string) => void,
  ) {}

  /** The store granted a reader a version, by its open or by a resume. */
  granted(e: Ev<'grant'>, target: () => TargetState): void {
    const key = `${e.target}\u0000${e.requestId}`;
    let r = this.readers.get(key);
    if (!r) this.readers.set(key, (r = {}));
    if (e.via === 'open') r.opened = e.version;
    else r.resumed = e.version;
    // S1 for readers: a granted resume means nothing was written since the version the reader saw.
    const seen = e.seenVersion;
    const later = seen === undefined || e.via !== 'resume' ? undefined : target().applied.find((w) => w.version > seen);
    if (later)
      this.violate(
        'S1',
        e,
        e.target,
        `read resume of ${e.requestId} granted at version ${seen} after ${later.requestId} wrote ${JSON.stringify(later.bytes)} (version ${later.version})`,
      );
  }

  /** An open returned to its application: a fresh open was granted by an open, a reclaim by a resume; either way the node kept it. */
  opened(target: string, requestId: string): void {
    const r = this.readers.get(`${target}\u0000${requestId}`);
    if (r) this.told(r);
  }

  /** A handle was seen active again: only through a granted resume that reached its node. */
  active(target: string, requestId: string): void {
    const r = this.readers.get(`${target}\u0000${requestId}`);
    if (r?.resumed !== undefined) this.told(r);
  }

  /**
   * L1 for readers. The version a resume carries is the node's claim of what the reader saw, and a
   * node that lost a version the store granted (and carries 0, say, or an older one) makes every
   * write since look like a reason to deny. So the denial is judged against the store's own account
   * first: the newest version the store granted the requestId, by its open or by a resume, once the
   * history proves the node received that grant and had kept it:
   *  - an open (or a reclaim, which the store grants as a resume) once it returned to the application
   *    (`ok` of the open); before that, a crash may rightly lose it;
   *  - a resume once the handle was seen `active` again (its `state` event): the node agent keeps a
   *    reader's new version and fsyncs it in the same batch, before it tells the application, so a
   *    handle seen active has that version on disk. A grant whose answer never arrived (the agent
   *    died on it, the link dropped it) is not counted.
   * Versions learned from read answers are not counted, although the history shows them (`read`,
   * `ok`): the node keeps such a version without holding back the read's answer, so a crash right
   * after the answer may rightly lose it, and the history cannot tell when that keep reached the
   * disk. The reader's next resume carries it and, once granted and seen active, counts.
   * A reader has seen at least the counted version, so if nothing was written after it, nothing
   * changed under the reader and the denial is needless; a resume that carried an older version says
   * the node forgot what the store granted. Then, as before, against the version the resume carried
   * (which reads may have moved past the granted one).
   */
  /**
   * A reader's denial is judged when the store decides it (on the writes applied by then), and held
   * against the node only once its application was told: the handle invalidated, or its reclaim (an
   * open) failed. A late resume from a session the node left (a replica that stalled) is denied too,
   * but that answer reaches nobody.
   */
  denied(e: Ev<'deny'>, s: TargetState): void {
    const writtenAfter = (v: number) => s.applied.some((w) => w.version > v);
    const told = this.readers.get(`${e.target}\u0000${e.requestId}`)?.told;
    const carried = e.seenVersion;
    // Per session: a later denial through another session (a late one) leaves this one's judgement be.
    const key = `${e.target}\u0000${e.requestId}\u0000${e.session}`;
    this.denials.delete(key);
    if (told !== undefined && !writtenAfter(told)) {
      const why =
        carried === undefined
          ? 'carrying no version'
          : carried < told
            ? `carrying version ${carried}, older than the version the store granted it: the node lost it`
            : `carrying version ${carried}`;
      this.denials.set(key, {
        e,
        message: `read resume of ${e.requestId} denied ${e.reason}, but ${e.target} was not written after version ${told}, which the store granted it with and its node received (${why})`,
      });
    } else if (carried !== undefined && !writtenAfter(carried)) {
      this.denials.set(key, {
        e,
        message: `read resume of ${e.requestId} denied ${e.reason}, but ${e.target} was not written after version ${carried}, which the resume carried`,
      });
    }
  }

  /** The application was told its reader's handle is lost: a needless denial of it counts now. */
  tellApp(target: string, requestId: string | undefined): void {
    for (const [key, d] of this.denials) {
      if (d.e.target !== target || d.e.requestId !== requestId) continue;
      this.denials.delete(key);
      this.violate('L1', d.e, target, d.message);
    }
  }

  /** The node received the reader's latest grants and kept their versions: it owes the newest from now on. */
  private told(r: { opened?: number; resumed?: number; told?: number }): void {
    for (const v of [r.opened, r.resumed]) if (v !== undefined) r.told = Math.max(r.told ?? v, v);
    r.opened = undefined;
    r.resumed = undefined;
  }
}
