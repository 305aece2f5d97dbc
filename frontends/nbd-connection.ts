/**
 * One NBD client connection in transmission: its requests served through the handle it shares with its
 * principal's other connections to the target (nbd-shared.ts: a read handle, then the write handle
 * taken at the first write-type request on any of them), answered in simple replies, or structured
 * ones once the client negotiated them (nbd-replies.ts), and its share of the handle given up when the
 * client goes (the last to go closes it).
 */
import type { Socket } from 'node:net';
import type { Handle } from '../actors/application.js';
import { SafeResumeError } from '../errors.js';
import { MAX_IO_BYTES } from '../transport/messages.js';
import { MAX_TARGET_BYTES } from '../store/types.js';
import { LOCKED_RETRY_MS, MAX_REQUEST_BYTES, STORAGE_WAIT_MS, ZEROS } from './nbd-limits.js';
import { NbdHandshake } from './nbd-handshake.js';
import type { Auth, NbdExportOptions } from './nbd-options.js';
import type { Admission } from './nbd-limits.js';
import type { Member, SharedHandles } from './nbd-shared.js';
import { allocation, replyBytes, type Served } from './nbd-replies.js';
import { CMD, CMD_FLAG, ERR, Errno, REP, errnoOf } from './nbd-wire.js';

/** One client connection: the handshake, then transmission over one handle. */
export class Connection extends NbdHandshake {
  /** This connection among those sharing its handle. */
  private readonly member: Member = { live: () => this.phase !== 'closed' };

  constructor(
    socket: Socket,
    opts: NbdExportOptions,
    auth: Auth,
    admission: Admission,
    gone: () => void,
    trusted: () => void,
    /** The export's shared handles. */
    private readonly handles: SharedHandles,
  ) {
    super(socket, opts, auth, admission, gone, trusted);
  }

  protected async sized(
    name: string,
  ): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }> {
    if (name.length === 0 || name.length > 4096)
      return { ok: false, code: REP.ERR_UNKNOWN, message: 'the export name is the target: give one' };
    try {
      const size = this.opts.size ? await this.opts.size(name) : MAX_TARGET_BYTES;
      return { ok: true, size };
    } catch (err) {
      return { ok: false, code: REP.ERR_UNKNOWN, message: String((err as Error).message) };
    }
  }

  /** The size a target would be exported with, learnt through a read handle open for a moment (INFO). */
  protected async sizeOf(
    name: string,
  ): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }> {
    const sized = await this.sized(name);
    if (!sized.ok) return sized;
    const down = await this.storageDown();
    if (down) return down;
    try {
      const h = await this.app!.open(name, { mode: 'read', onFailure: 'error' });
      const size = h.size;
      await h.close().catch(() => undefined);
      return { ok: true, size: size ?? sized.size };
    } catch (err) {
      const code = err instanceof SafeResumeError ? err.code : 'ERROR';
      return { ok: false, code: REP.ERR_POLICY, message: `${name}: ${code}: ${(err as Error).message}` };
    }
  }

  /**
   * Open `name` with `mode`; a write open retries briefly while the target is LOCKED and `wanted` (a
   * client reconnecting at once may find its previous connection still releasing it).
   */
  protected async openAs(
    name: string,
    mode: 'read' | 'write',
    wanted: () => boolean = () => this.phase !== 'closed',
  ): Promise<Handle> {
    for (const until = Date.now() + LOCKED_RETRY_MS; ;) {
      try {
        return await this.app!.open(name, { mode, onFailure: this.opts.onFailure ?? 'pause' });
      } catch (err) {
        if (err instanceof SafeResumeError && err.code === 'LOCKED' && Date.now() < until && wanted()) {
          await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        throw err;
      }
    }
  }

  /**
   * Undefined once the node agent has a session with a replica (waiting up to STORAGE_WAIT_MS for one);
   * otherwise the error a client gets: storage is unavailable, and why.
   */
  protected async storageDown(): Promise<{ ok: false; code: number; message: string } | undefined> {
    const agent = this.app!.agent;
    for (const until = Date.now() + STORAGE_WAIT_MS; agent.state !== 'connected';) {
      if (Date.now() >= until || this.phase === 'closed') {
        return {
          ok: false,
          code: REP.ERR_SHUTDOWN,
          message: `storage is unavailable: ${agent.id} has no session with any replica (${agent.state}); connect again once a replica is back`,
        };
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return undefined;
  }

  /**
   * Open the target for this connection: join the handle its principal's connections to the target
   * share, or open a read handle for them (the write handle is taken at the first write on any).
   */
  protected async attach(
    name: string,
  ): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }> {
    const sized = await this.sized(name);
    if (!sized.ok) return sized;
    const down = await this.storageDown();
    if (down) return down;
    const refused = (err: unknown) => {
      const code = err instanceof SafeResumeError ? err.code : 'ERROR';
      return { ok: false as const, code: REP.ERR_POLICY, message: `${name}: ${code}: ${(err as Error).message}` };
    };
    if (this.handles.has(this.principal, name)) {
      // Joining is an open too: access is checked now, not only when the shared handle was opened.
      try {
        await (await this.openAs(name, 'read')).close();
      } catch (err) {
        return refused(err);
      }
    }
    const shared = this.handles.join(this.principal, name, this.member, () => this.openAs(name, 'read'));
    let handle: Handle;
    try {
      handle = await shared.opened;
    } catch (err) {
      await shared.leave(this.member);
      return refused(err);
    }
    if (this.phase === 'closed') {
      // The client went away while the target was being opened: nothing may stay held for it.
      await shared.leave(this.member);
      return { ok: false, code: REP.ERR_POLICY, message: 'the client went away' };
    }
    this.target = name;
    this.size = handle.size ?? sized.size;
    this.shared = shared;
    return { ok: true, size: this.size };
  }

  protected request(
    type: number,
    cookie: bigint,
    offset: bigint,
    length: number,
    data: Buffer | undefined,
    cost: number,
    flags: number,
  ): void {
    if (type === CMD.DISC) {
      // Requests already sent are answered, then the handle goes and the connection ends.
      this.disconnecting = true;
      this.socket.pause();
      const pending = [...this.pending];
      void Promise.allSettled(pending).then(async () => {
        await this.release();
        this.socket.end();
      });
      return;
    }
    if (this.disconnecting) return;
    this.inflight++;
    this.inflightBytes += cost;
    const p = this.serve(type, offset, length, data, flags).then(
      (out) => this.answer(cookie, offset, 0, out, cost),
      (err: unknown) =>
        this.answer(cookie, offset, errnoOf(err), undefined, cost, err instanceof Error ? err.message : String(err)),
    );
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }

  protected answer(cookie: bigint, offset: bigint, error: number, served: Served, cost: number, message = ''): void {
    this.inflight--;
    this.inflightBytes -= cost;
    if (this.phase === 'closed' || this.socket.writableEnded) return;
    this.corkReplies();
    this.socket.write(replyBytes(this.structured, cookie, offset, error, served, message));
    if (!this.disconnecting) this.pump();
  }

  /**
   * Replies answered together go out in one write: the socket is corked at the first and uncorked by
   * a `process.nextTick` (after the current callback, or once the promise jobs that answer the rest of
   * a group commit have run), so a group of replies wakes the client once, and a reply's header and
   * data need no copy into one buffer.
   */
  private corkReplies(): void {
    if (this.replyCorked) return;
    const socket = this.socket;
    this.replyCorked = true;
    socket.cork();
    process.nextTick(() => {
      this.replyCorked = false;
      if (!socket.destroyed) socket.uncork();
    });
  }

  private replyCorked = false;

  protected async serve(
    type: number,
    offset: bigint,
    length: number,
    data: Buffer | undefined,
    flags: number,
  ): Promise<Served> {
    const shared = this.shared!;
    const h = shared.handle!;
    const failure = shared.failure();
    if (failure) throw failure;
    const end = offset + BigInt(length);
    if (type === CMD.FLUSH) {
      // Every write acknowledged is already durable in the store; a flush waits for those still on
      // their way, on every connection sharing the handle.
      await Promise.all([...shared.writes]);
      return undefined;
    }
    if (type === CMD.BLOCK_STATUS) return this.blockStatus(h, offset, length, flags);
    if (type !== CMD.READ && type !== CMD.WRITE && type !== CMD.TRIM && type !== CMD.WRITE_ZEROES)
      throw new Errno(ERR.EINVAL, `command ${type}`);
    if (end > BigInt(this.size))
      throw new Errno(type === CMD.READ ? ERR.EINVAL : ERR.ENOSPC, 'past the end of the export');
    const at = Number(offset);
    if (type === CMD.READ) {
      if (length > MAX_REQUEST_BYTES) throw new Errno(ERR.EINVAL, `read of ${length} bytes`);
      const r = (async () => {
        const out = new Uint8Array(length);
        for (let done = 0; done < length; done += MAX_IO_BYTES) {
          const n = Math.min(MAX_IO_BYTES, length - done);
          // Past what was ever written a target reads short: those bytes are zeros.
          out.set(await h.read(at + done, n), done);
        }
        return out;
      })();
      if (h.mode !== 'read') return r;
      shared.reads.add(r);
      try {
        return await r;
      } finally {
        shared.reads.delete(r);
      }
    }
    // WRITE_ZEROES and TRIM write zeros (a trimmed range reads back as zeros): the store keeps no page
    // left all zeros, so whole pages are freed and the edges of partial ones zeroed.
    const bytes = type === CMD.WRITE ? data! : undefined;
    const w = (async () => {
      const wh = await shared.writable(() => this.openAs(this.target, 'write', () => shared.live()));
      for (let done = 0; done < length; done += MAX_IO_BYTES) {
        const n = Math.min(MAX_IO_BYTES, length - done);
        await wh.write(at + done, bytes ? bytes.subarray(done, done + n) : ZEROS.subarray(0, n));
      }
    })();
    this.writes.add(w);
    shared.writes.add(w);
    try {
      await w;
    } finally {
      this.writes.delete(w);
      shared.writes.delete(w);
    }
    return undefined;
  }

  /**
   * NBD_CMD_BLOCK_STATUS: the `base:allocation` extents of the range, from the pages the store keeps
   * (handle.extents). Only once the client selected that context for this export; a range that is
   * empty or passes the end is refused EINVAL. The answer may cover a prefix of the range (the store
   * lists a bounded number of pages at once): the client asks again from where it ends.
   */
  protected async blockStatus(h: Handle, offset: bigint, length: number, flags: number): Promise<Served> {
    if (!this.structured || this.metaFor !== this.target)
      throw new Errno(ERR.EINVAL, 'BLOCK_STATUS needs structured replies and base:allocation selected for this export');
    if (length === 0) throw new Errno(ERR.EINVAL, 'BLOCK_STATUS of no bytes');
    if (offset + BigInt(length) > BigInt(this.size)) throw new Errno(ERR.EINVAL, 'past the end of the export');
    const at = Number(offset);
    const r = h.extents(at, length);
    const reads = this.shared!.reads;
    if (h.mode === 'read') reads.add(r);
    try {
      const { kept, end } = await r;
      return { status: allocation(at, end, kept, (flags & CMD_FLAG.REQ_ONE) !== 0) };
    } finally {
      reads.delete(r);
    }
  }

  protected closed(): void {
    this.gone();
    this.phase = 'closed';
    clearTimeout(this.deadline);
    clearTimeout(this.idle);
    this.place.stop();
    this.place.give(this.principal);
    this.chunks = [];
    this.have = 0;
    // Its share of the handle goes once its writes are answered (a client that vanished leaves nothing held).
    void Promise.allSettled([...this.writes]).then(() => this.release());
  }

  /**
   * Give up this connection's share of the handle once; the last sharing connection to go closes it (an
   * invalidated one too, so the application forgets it).
   */
  protected async release(): Promise<void> {
    const shared = this.shared;
    if (!shared || this.released) return;
    this.released = true;
    await shared.leave(this.member);
  }
}
