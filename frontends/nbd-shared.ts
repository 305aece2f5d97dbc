/**
 * The handles NBD connections share (multi-conn): the connections of one principal to one target
 * (export name) serve their requests through one handle, a read handle until the first write-type
 * request on any of them, then one write handle. What one writes, the others read at once, and a
 * FLUSH on any waits for the writes in flight on all. Connections of different principals never
 * share: each principal's connections hold their own handle, and its lock, as a single one would.
 *
 * A connection that joins a handle already shared opens the target for reading first, and closes
 * that handle at once: its principal's access is checked as for any open (a revoked principal's new
 * connection is refused FORBIDDEN, though its connections already open keep the shared handle).
 *
 * A shared handle that is invalidated (or whose write handle is refused because the target changed
 * since it was opened: MODIFIED) fails every later request of every connection sharing it with EIO;
 * a connection made after that opens the target afresh. The handle is closed once the last sharing
 * connection has gone and its writes are answered.
 */
import type { Handle } from '../actors/application.js';
import { SafeResumeError } from '../errors.js';
import type { NbdExportOptions } from './nbd-options.js';
import { ERR, Errno } from './nbd-wire.js';

/** One connection's membership of a shared handle: `live` while its client is still there. */
export interface Member {
  live: () => boolean;
}

/** The export's shared handles, by principal and target. */
export class SharedHandles {
  private readonly byKey = new Map<string, SharedHandle>();

  constructor(private readonly opts: Pick<NbdExportOptions, 'log' | 'onInvalidated' | 'onHandle'>) {}

  /**
   * Join the connections of `principal` to `target`: the handle they share, opened for reading with
   * `open` if they hold none yet (or only one that was invalidated). `member` leaves it with `leave`.
   */
  /** Whether `principal`'s connections to `target` hold a handle a new connection would join. */
  has(principal: string, target: string): boolean {
    return this.byKey.has(JSON.stringify([principal, target]));
  }

  join(principal: string, target: string, member: Member, open: () => Promise<Handle>): SharedHandle {
    const key = JSON.stringify([principal, target]);
    let s = this.byKey.get(key);
    if (!s) {
      const retire = (): void => {
        if (this.byKey.get(key) === s) this.byKey.delete(key);
      };
      s = new SharedHandle(target, this.opts, retire, open);
      this.byKey.set(key, s);
    }
    s.members.add(member);
    return s;
  }
}

/** One handle shared by the connections of one principal to one target. */
export class SharedHandle {
  /** The connections sharing it. */
  readonly members = new Set<Member>();
  /** The read handle, once open (it serves the first requests). */
  readonly opened: Promise<Handle>;
  /** The handle serving requests: the read handle until the first write-type request, then the write handle. */
  handle: Handle | undefined;
  /** The target's version when the read handle opened: the write handle is taken only at this version. */
  private openedAt = 0;
  /** The write handle being taken (shared by the write-type requests that wait for it, on every connection). */
  private upgrading: Promise<Handle> | undefined;
  /** Why every sharing connection's requests fail: the target changed before it could be written (MODIFIED). */
  invalid: string | undefined;
  /** Requests the read handle is serving (it is closed once they are answered). */
  readonly reads = new Set<Promise<unknown>>();
  /** Writes in flight on every sharing connection (a FLUSH on any waits for them). */
  readonly writes = new Set<Promise<unknown>>();
  private released = false;

  constructor(
    readonly target: string,
    private readonly opts: Pick<NbdExportOptions, 'log' | 'onInvalidated' | 'onHandle'>,
    /** No new connection joins it from now on. */
    private readonly retire: () => void,
    /** Opens the read handle the sharing connections start with. */
    open: () => Promise<Handle>,
  ) {
    this.opened = open().then(
      (h) => {
        this.openedAt = h.version;
        this.use(h);
        return h;
      },
      (err: unknown) => {
        this.retire();
        throw err;
      },
    );
    this.opened.catch(() => undefined);
  }

  /** Whether a sharing connection's client is still there. */
  live(): boolean {
    for (const m of this.members) if (m.live()) return true;
    return false;
  }

  /** Serve requests through `handle` from now on, telling its invalidation. */
  private use(handle: Handle): void {
    this.handle = handle;
    this.opts.onHandle?.(handle, this.target);
    handle.on('invalidated', (reason) => {
      this.retire();
      this.opts.log?.warn({ target: this.target, reason }, 'nbd export invalidated: requests fail with EIO');
      this.opts.onInvalidated?.(this.target, reason);
    });
  }

  /** The error every request gets once the handle is invalidated, if it is. */
  failure(): Errno | undefined {
    if (this.invalid) return new Errno(ERR.EIO, `${this.target} was invalidated (${this.invalid})`);
    if (this.handle?.state === 'invalidated')
      return new Errno(ERR.EIO, `${this.target} was invalidated (${this.handle.reason ?? 'MODIFIED'})`);
    return undefined;
  }

  /**
   * The write handle, taken with `openWrite` at the first write-type request on any sharing connection
   * (the requests that arrive meanwhile, on any of them, share it).
   */
  writable(openWrite: () => Promise<Handle>): Promise<Handle> {
    const h = this.handle!;
    if (h.mode === 'write') return Promise.resolve(h);
    const p = (this.upgrading ??= this.upgrade(h, openWrite));
    // A write refused while another writer holds the lock leaves the next write to try again.
    p.catch(() => {
      if (this.upgrading === p && !this.invalid) this.upgrading = undefined;
    });
    return p;
  }

  /**
   * Open the target for writing, and keep that handle only if the target is still at the version the
   * read handle opened it at: otherwise what the clients read may be stale, so nothing is written over
   * it: the write fails with EIO, and so does every later request of every sharing connection (the
   * handle counts as invalidated, MODIFIED).
   */
  private async upgrade(reader: Handle, openWrite: () => Promise<Handle>): Promise<Handle> {
    let writer: Handle;
    try {
      writer = await openWrite();
    } catch (err) {
      const code = err instanceof SafeResumeError ? err.code : 'ERROR';
      this.opts.log?.warn(
        { target: this.target, code },
        'nbd write refused: the target could not be opened for writing',
      );
      throw new Errno(ERR.EIO, `${this.target} could not be opened for writing: ${code}: ${(err as Error).message}`);
    }
    if (this.released || !this.live()) {
      await writer.close().catch(() => undefined);
      throw new Errno(ERR.ESHUTDOWN, 'the client went away');
    }
    if (writer.version !== this.openedAt || reader.state === 'invalidated') {
      await writer.close().catch(() => undefined);
      this.invalid = 'MODIFIED';
      this.retire();
      this.opts.log?.warn(
        { target: this.target, opened: this.openedAt, now: writer.version },
        'nbd export invalidated: the target was written by another writer since its connections opened it; requests fail with EIO',
      );
      this.opts.onInvalidated?.(this.target, 'MODIFIED');
      throw new Errno(
        ERR.EIO,
        `${this.target} was modified by another writer since this connection opened it (MODIFIED)`,
      );
    }
    this.use(writer);
    // The read handle goes once the reads it serves are answered.
    const reads = [...this.reads];
    this.reads.clear();
    void Promise.allSettled(reads).then(() => reader.close().catch(() => undefined));
    return writer;
  }

  /**
   * `member` goes (its writes answered). The last to go closes the handle (an invalidated one too, so
   * the application forgets it); resolves once it is closed.
   */
  async leave(member: Member): Promise<void> {
    if (!this.members.delete(member) || this.members.size > 0) return;
    this.retire();
    this.released = true;
    await Promise.allSettled([this.opened, this.upgrading, ...this.writes]);
    const h = this.handle;
    if (h && h.state !== 'closed') await h.close().catch(() => undefined);
  }
}
