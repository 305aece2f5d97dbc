/**
 * One NBD client connection in transmission: its requests served through the connection's handle (a
 * read handle, then the write handle taken at the first write-type request), answered in simple
 * replies, or structured ones once the client negotiated them (nbd-replies.ts), and the handle
 * released when the client goes.
 */
import type { Handle } from '../actors/application.js';
import { SafeResumeError } from '../errors.js';
import { MAX_IO_BYTES } from '../transport/messages.js';
import { MAX_TARGET_BYTES } from '../store/types.js';
import { LOCKED_RETRY_MS, MAX_REQUEST_BYTES, STORAGE_WAIT_MS, ZEROS } from './nbd-limits.js';
import { NbdHandshake } from './nbd-handshake.js';
import { allocation, replyBytes, type Served } from './nbd-replies.js';
import { CMD, CMD_FLAG, ERR, Errno, REP, errnoOf } from './nbd-wire.js';

/** One client connection: the handshake, then transmission over one handle. */
export class Connection extends NbdHandshake {
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
   * Open `name` with `mode`; a write open retries briefly while the target is LOCKED (a client
   * reconnecting at once may find its previous connection still releasing it).
   */
  protected async openAs(name: string, mode: 'read' | 'write'): Promise<Handle> {
    for (const until = Date.now() + LOCKED_RETRY_MS; ;) {
      try {
        return await this.app!.open(name, { mode, onFailure: this.opts.onFailure ?? 'pause' });
      } catch (err) {
        if (err instanceof SafeResumeError && err.code === 'LOCKED' && Date.now() < until && this.phase !== 'closed') {
          await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        throw err;
      }
    }
  }

  /** Serve requests through `handle` from now on, telling its invalidation. */
  protected use(handle: Handle): void {
    this.handle = handle;
    this.opts.onHandle?.(handle, this.target);
    handle.on('invalidated', (reason) => {
      this.opts.log?.warn({ target: this.target, reason }, 'nbd export invalidated: requests fail with EIO');
      this.opts.onInvalidated?.(this.target, reason);
    });
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

  /** Open the target for this connection (a read handle: the write handle is taken at the first write). */
  protected async attach(
    name: string,
  ): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }> {
    const sized = await this.sized(name);
    if (!sized.ok) return sized;
    const down = await this.storageDown();
    if (down) return down;
    let handle: Handle;
    try {
      handle = await this.openAs(name, 'read');
    } catch (err) {
      const code = err instanceof SafeResumeError ? err.code : 'ERROR';
      return { ok: false, code: REP.ERR_POLICY, message: `${name}: ${code}: ${(err as Error).message}` };
    }
    if (this.phase === 'closed') {
      // The client went away while the target was being opened: nothing may stay held for it.
      await handle.close().catch(() => undefined);
      return { ok: false, code: REP.ERR_POLICY, message: 'the client went away' };
    }
    this.target = name;
    this.openedAt = handle.version;
    this.size = handle.size ?? sized.size;
    this.use(handle);
    return { ok: true, size: this.size };
  }

  /** The write handle, taken at the first write-type request (the requests that arrive meanwhile share it). */
  protected writable(): Promise<Handle> {
    const h = this.handle!;
    if (h.mode === 'write') return Promise.resolve(h);
    const p = (this.upgrading ??= this.upgrade(h));
    // A write refused while another writer holds the lock leaves the next write to try again.
    p.catch(() => {
      if (this.upgrading === p && !this.invalid) this.upgrading = undefined;
    });
    return p;
  }

  /**
   * Open the target for writing, and keep that handle only if the target is still at the version the
   * connection opened it at: otherwise what the client read may be stale, so nothing is written over
   * it: the write fails with EIO, and so does every later request (the handle counts as invalidated,
   * MODIFIED).
   */
  protected async upgrade(reader: Handle): Promise<Handle> {
    let writer: Handle;
    try {
      writer = await this.openAs(this.target, 'write');
    } catch (err) {
      const code = err instanceof SafeResumeError ? err.code : 'ERROR';
      this.opts.log?.warn(
        { target: this.target, code },
        'nbd write refused: the target could not be opened for writing',
      );
      throw new Errno(ERR.EIO, `${this.target} could not be opened for writing: ${code}: ${(err as Error).message}`);
    }
    if (this.phase === 'closed' || this.released) {
      await writer.close().catch(() => undefined);
      throw new Errno(ERR.ESHUTDOWN, 'the client went away');
    }
    if (writer.version !== this.openedAt || reader.state === 'invalidated') {
      await writer.close().catch(() => undefined);
      this.invalid = 'MODIFIED';
      this.opts.log?.warn(
        { target: this.target, opened: this.openedAt, now: writer.version },
        'nbd export invalidated: the target was written by another writer since this connection opened it; requests fail with EIO',
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
    this.socket.write(replyBytes(this.structured, cookie, offset, error, served, message));
    if (!this.disconnecting) this.pump();
  }

  protected async serve(
    type: number,
    offset: bigint,
    length: number,
    data: Buffer | undefined,
    flags: number,
  ): Promise<Served> {
    const h = this.handle!;
    if (this.invalid) throw new Errno(ERR.EIO, `${this.target} was invalidated (${this.invalid})`);
    if (h.state === 'invalidated')
      throw new Errno(ERR.EIO, `${this.target} was invalidated (${h.reason ?? 'MODIFIED'})`);
    const end = offset + BigInt(length);
    if (type === CMD.FLUSH) {
      // Every write acknowledged is already durable in the store; a flush waits for those still on their way.
      await Promise.all([...this.writes]);
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
      this.reads.add(r);
      try {
        return await r;
      } finally {
        this.reads.delete(r);
      }
    }
    // WRITE_ZEROES and TRIM write zeros (a trimmed range reads back as zeros): the store keeps no page
    // left all zeros, so whole pages are freed and the edges of partial ones zeroed.
    const bytes = type === CMD.WRITE ? data! : undefined;
    const w = (async () => {
      const wh = await this.writable();
      for (let done = 0; done < length; done += MAX_IO_BYTES) {
        const n = Math.min(MAX_IO_BYTES, length - done);
        await wh.write(at + done, bytes ? bytes.subarray(done, done + n) : ZEROS.subarray(0, n));
      }
    })();
    this.writes.add(w);
    try {
      await w;
    } finally {
      this.writes.delete(w);
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
    if (h.mode === 'read') this.reads.add(r);
    try {
      const { kept, end } = await r;
      return { status: allocation(at, end, kept, (flags & CMD_FLAG.REQ_ONE) !== 0) };
    } finally {
      this.reads.delete(r);
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
    // The handle goes once its writes are answered (a client that vanished leaves nothing held).
    void Promise.allSettled([...this.writes]).then(() => this.release());
  }

  /** Close the handle once (an invalidated one too, so the application forgets it). */
  protected async release(): Promise<void> {
    const h = this.handle;
    if (!h || this.released) return;
    this.released = true;
    if (h.state !== 'closed') await h.close().catch(() => undefined);
  }
}
