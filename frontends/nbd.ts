/**
 * An NBD export: unmodified programs (qemu-io, qemu-img, QEMU, nbd clients) use a safe-resume target
 * as a block device. Built only on `Application` and `Handle`: a request waits while its handle is
 * paused, completes after a granted resume, and fails with EIO once the handle is invalidated (or at
 * once, with `onFailure: 'error'`, while storage is away).
 *
 * Protocol: the fixed newstyle handshake of the NBD protocol (doc/proto.md of the NetworkBlockDevice
 * project): options GO, INFO, LIST, ABORT and EXPORT_NAME; commands READ, WRITE, FLUSH, DISC, TRIM and
 * WRITE_ZEROES, simple replies. The export name is the target. Malformed input gets an NBD error reply
 * or a closed connection, never a crash.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Application, Handle } from '../actors/application.js';
import { SafeResumeError } from '../errors.js';
import { MAX_IO_BYTES } from '../transport/messages.js';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;

const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7 } as const;
const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006 } as const;
const INFO = { EXPORT: 0, BLOCK_SIZE: 3 } as const;
const TX = { HAS_FLAGS: 1 << 0, SEND_FLUSH: 1 << 2, SEND_FUA: 1 << 3, SEND_TRIM: 1 << 5, SEND_WRITE_ZEROES: 1 << 6 } as const;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 } as const;
const ERR = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** The longest option a client may send (an export name is at most 4 KiB). */
const MAX_OPTION_BYTES = 8192;
/** The longest request payload taken (larger writes are refused and the connection closed). */
const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** Requests of one connection answered at once; past it the socket is not read. */
const MAX_INFLIGHT = 64;

export interface NbdExportOptions {
  /** The application whose handles serve the exports (one write handle per connection). */
  app: Application;
  /** The size of a target's export in bytes (its disk size). */
  size: (target: string) => number | Promise<number>;
  /** Where to listen: a TCP port on `host` (default 127.0.0.1, port 0: a free one), or a Unix socket path. */
  host?: string;
  port?: number;
  path?: string;
  /** `pause` (default): requests wait through storage failures. `error`: they fail with EIO at once. */
  onFailure?: 'pause' | 'error';
  log?: Logger;
  /** Told when a connection's handle is invalidated (target, reason), for status and the inspector. */
  onInvalidated?: (target: string, reason: string) => void;
}

/** What `status` shows of an export connection. */
export interface NbdConnectionView {
  target: string;
  state: string;
  reason?: string | undefined;
  requests: number;
}

class ProtocolError extends Error {}

export class NbdExport {
  private server: Server | undefined;
  private readonly conns = new Set<Connection>();
  url = '';

  constructor(private readonly opts: NbdExportOptions) {}

  async listen(): Promise<string> {
    const server = createServer((socket) => {
      const c = new Connection(socket, this.opts);
      this.conns.add(c);
      socket.once('close', () => this.conns.delete(c));
    });
    server.maxConnections = 256;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (this.opts.path) server.listen(this.opts.path, resolve);
      else server.listen(this.opts.port ?? 0, this.opts.host ?? '127.0.0.1', resolve);
    });
    server.on('error', (err) => this.opts.log?.warn({ err: String(err) }, 'nbd listener error'));
    this.server = server;
    if (this.opts.path) this.url = `nbd+unix:///?socket=${this.opts.path}`;
    else {
      const a = server.address() as AddressInfo;
      this.url = `nbd://${a.address}:${a.port}/`;
    }
    return this.url;
  }

  /** The URL a client opens `target` with (`nbd://host:port/target`, or `nbd+unix:///target?socket=path`). */
  urlFor(target: string): string {
    const name = encodeURIComponent(target);
    return this.opts.path ? `nbd+unix:///${name}?socket=${this.opts.path}` : `${this.url}${name}`;
  }

  /** The open export connections. */
  connections(): NbdConnectionView[] {
    return [...this.conns].map((c) => c.view()).filter((v): v is NbdConnectionView => v !== undefined);
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

/** One client connection: the handshake, then transmission over one handle. */
class Connection {
  private buf: Buffer = Buffer.alloc(0);
  private phase: 'flags' | 'options' | 'transmission' | 'closed' = 'flags';
  private noZeroes = false;
  private busy = false;
  private handle: Handle | undefined;
  private target = '';
  private size = 0;
  private inflight = 0;
  private readonly writes = new Set<Promise<unknown>>();
  private disconnecting = false;

  constructor(
    private readonly socket: Socket,
    private readonly opts: NbdExportOptions,
  ) {
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      this.pump();
    });
    socket.once('close', () => this.closed());
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    socket.write(hello);
  }

  view(): NbdConnectionView | undefined {
    if (!this.handle) return undefined;
    return { target: this.target, state: this.handle.state, reason: this.handle.reason, requests: this.inflight };
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Take what the buffer holds, one message at a time (an option waits for its answer first). */
  private pump(): void {
    if (this.busy || this.phase === 'closed') return;
    try {
      for (;;) {
        if (this.phase === 'flags') {
          if (this.buf.length < 4) return;
          const flags = this.buf.readUInt32BE(0);
          this.buf = this.buf.subarray(4);
          if (!(flags & FLAG_FIXED_NEWSTYLE)) throw new ProtocolError('the client does not speak fixed newstyle');
          this.noZeroes = (flags & FLAG_NO_ZEROES) !== 0;
          this.phase = 'options';
        } else if (this.phase === 'options') {
          if (this.buf.length < 16) return;
          if (this.buf.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError('bad option magic');
          const option = this.buf.readUInt32BE(8);
          const length = this.buf.readUInt32BE(12);
          if (length > MAX_OPTION_BYTES) throw new ProtocolError(`option of ${length} bytes`);
          if (this.buf.length < 16 + length) return;
          const data = this.buf.subarray(16, 16 + length);
          this.buf = this.buf.subarray(16 + length);
          this.busy = true;
          void this.option(option, Buffer.from(data)).then(
            () => {
              this.busy = false;
              this.pump();
            },
            (err: unknown) => this.fail(err),
          );
          return;
        } else if (this.phase === 'transmission') {
          if (this.inflight >= MAX_INFLIGHT) {
            this.socket.pause();
            return;
          }
          if (this.buf.length < 28) return;
          if (this.buf.readUInt32BE(0) !== REQUEST_MAGIC) throw new ProtocolError('bad request magic');
          const type = this.buf.readUInt16BE(6);
          const cookie = this.buf.readBigUInt64BE(8);
          const offset = this.buf.readBigUInt64BE(16);
          const length = this.buf.readUInt32BE(24);
          const payload = type === CMD.WRITE ? length : 0;
          if (payload > MAX_REQUEST_BYTES) throw new ProtocolError(`write of ${length} bytes`);
          if (this.buf.length < 28 + payload) return;
          const data = payload > 0 ? Buffer.from(this.buf.subarray(28, 28 + payload)) : undefined;
          this.buf = this.buf.subarray(28 + payload);
          this.request(type, cookie, offset, length, data);
        } else return;
      }
    } catch (err) {
      this.fail(err);
    }
  }

  private fail(err: unknown): void {
    this.opts.log?.warn({ err: String(err), target: this.target || undefined }, 'nbd connection closed');
    this.phase = 'closed';
    this.socket.destroy();
  }

  private reply(option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(REPLY_MAGIC, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(data.length, 16);
    this.socket.write(data.length > 0 ? Buffer.concat([h, data]) : h);
  }

  private async option(option: number, data: Buffer): Promise<void> {
    switch (option) {
      case OPT.ABORT:
        this.reply(option, REP.ACK);
        this.phase = 'closed';
        this.socket.end();
        return;
      case OPT.LIST: {
        // Any target may be exported by name; none is listed.
        if (data.length !== 0) return this.reply(option, REP.ERR_INVALID, Buffer.from('LIST takes no data'));
        return this.reply(option, REP.ACK);
      }
      case OPT.EXPORT_NAME: {
        const name = data.toString('utf8');
        const ok = await this.attach(name);
        if (!ok) throw new ProtocolError(`export ${JSON.stringify(name)} could not be opened`);
        const out = Buffer.alloc(this.noZeroes ? 10 : 134);
        out.writeBigUInt64BE(BigInt(this.size), 0);
        out.writeUInt16BE(this.flags(), 8);
        this.socket.write(out);
        this.phase = 'transmission';
        return;
      }
      case OPT.INFO:
      case OPT.GO: {
        if (data.length < 6) return this.reply(option, REP.ERR_INVALID, Buffer.from('short request'));
        const nameLength = data.readUInt32BE(0);
        if (data.length < 4 + nameLength + 2) return this.reply(option, REP.ERR_INVALID, Buffer.from('short request'));
        const name = data.subarray(4, 4 + nameLength).toString('utf8');
        const count = data.readUInt16BE(4 + nameLength);
        if (data.length !== 4 + nameLength + 2 + 2 * count) return this.reply(option, REP.ERR_INVALID, Buffer.from('bad length'));
        const want = new Set<number>();
        for (let i = 0; i < count; i++) want.add(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
        const ok = option === OPT.GO ? await this.attach(name) : await this.sized(name);
        if (!ok.ok) return this.reply(option, ok.code, Buffer.from(ok.message));
        const info = Buffer.alloc(12);
        info.writeUInt16BE(INFO.EXPORT, 0);
        info.writeBigUInt64BE(BigInt(ok.size), 2);
        info.writeUInt16BE(this.flags(), 10);
        this.reply(option, REP.INFO, info);
        if (want.has(INFO.BLOCK_SIZE)) {
          // Any byte range is fine; the preferred block is a page, the largest request what one message carries.
          const bs = Buffer.alloc(14);
          bs.writeUInt16BE(INFO.BLOCK_SIZE, 0);
          bs.writeUInt32BE(1, 2);
          bs.writeUInt32BE(4096, 6);
          bs.writeUInt32BE(MAX_IO_BYTES, 10);
          this.reply(option, REP.INFO, bs);
        }
        this.reply(option, REP.ACK);
        if (option === OPT.GO) this.phase = 'transmission';
        return;
      }
      default:
        return this.reply(option, REP.ERR_UNSUP, Buffer.from(`option ${option} is not supported`));
    }
  }

  private flags(): number {
    return TX.HAS_FLAGS | TX.SEND_FLUSH | TX.SEND_FUA | TX.SEND_TRIM | TX.SEND_WRITE_ZEROES;
  }

  private async sized(name: string): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }> {
    if (name.length === 0 || name.length > 4096) return { ok: false, code: REP.ERR_UNKNOWN, message: 'the export name is the target: give one' };
    try {
      const size = await this.opts.size(name);
      return { ok: true, size };
    } catch (err) {
      return { ok: false, code: REP.ERR_UNKNOWN, message: String((err as Error).message) };
    }
  }

  /** Open the target for this connection (a write handle). */
  private async attach(name: string): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }> {
    const sized = await this.sized(name);
    if (!sized.ok) return sized;
    try {
      this.handle = await this.opts.app.open(name, { onFailure: this.opts.onFailure ?? 'pause' });
    } catch (err) {
      const code = err instanceof SafeResumeError ? err.code : 'ERROR';
      return { ok: false, code: REP.ERR_POLICY, message: `${name}: ${code}: ${(err as Error).message}` };
    }
    this.target = name;
    this.size = sized.size;
    this.handle.on('invalidated', (reason) => {
      this.opts.log?.warn({ target: name, reason }, 'nbd export invalidated: requests fail with EIO');
      this.opts.onInvalidated?.(name, reason);
    });
    return sized;
  }

  private request(type: number, cookie: bigint, offset: bigint, length: number, data: Buffer | undefined): void {
    if (type === CMD.DISC) {
      this.disconnecting = true;
      void Promise.allSettled([...this.writes]).then(() => this.socket.end());
      return;
    }
    if (this.disconnecting) return;
    this.inflight++;
    void this.serve(type, offset, length, data).then(
      (out) => this.answer(cookie, 0, out),
      (err: unknown) => this.answer(cookie, errnoOf(err), undefined),
    );
  }

  private answer(cookie: bigint, error: number, data: Uint8Array | undefined): void {
    this.inflight--;
    if (this.phase === 'closed') return;
    const h = Buffer.alloc(16);
    h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(error, 4);
    h.writeBigUInt64BE(cookie, 8);
    this.socket.write(data && error === 0 ? Buffer.concat([h, data]) : h);
    if (this.inflight < MAX_INFLIGHT && this.socket.isPaused()) {
      this.socket.resume();
      this.pump();
    }
  }

  private async serve(type: number, offset: bigint, length: number, data: Buffer | undefined): Promise<Uint8Array | undefined> {
    const h = this.handle!;
    if (h.state === 'invalidated') throw new Errno(ERR.EIO, `${this.target} was invalidated (${h.reason ?? 'MODIFIED'})`);
    const end = offset + BigInt(length);
    if (type === CMD.FLUSH) {
      // Every write acknowledged is already durable in the store; a flush waits for those still on their way.
      await Promise.all([...this.writes]);
      return undefined;
    }
    if (type !== CMD.READ && type !== CMD.WRITE && type !== CMD.TRIM && type !== CMD.WRITE_ZEROES) throw new Errno(ERR.EINVAL, `command ${type}`);
    if (end > BigInt(this.size)) throw new Errno(type === CMD.READ ? ERR.EINVAL : ERR.ENOSPC, 'past the end of the export');
    const at = Number(offset);
    if (type === CMD.READ) {
      if (length > MAX_REQUEST_BYTES) throw new Errno(ERR.EINVAL, `read of ${length} bytes`);
      const out = new Uint8Array(length);
      for (let done = 0; done < length; done += MAX_IO_BYTES) {
        const n = Math.min(MAX_IO_BYTES, length - done);
        // Past what was ever written a target reads short: those bytes are zeros.
        out.set(await h.read(at + done, n), done);
      }
      return out;
    }
    if (type === CMD.TRIM) return undefined; // advisory: the bytes stay as they are
    const bytes = type === CMD.WRITE ? data! : undefined;
    const w = (async () => {
      for (let done = 0; done < length; done += MAX_IO_BYTES) {
        const n = Math.min(MAX_IO_BYTES, length - done);
        await h.write(at + done, bytes ? bytes.subarray(done, done + n) : new Uint8Array(n));
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

  private closed(): void {
    this.phase = 'closed';
    const h = this.handle;
    if (!h) return;
    // The handle goes once its writes are answered (a client that vanished leaves nothing held).
    void Promise.allSettled([...this.writes]).then(() => (h.state === 'invalidated' || h.state === 'closed' ? undefined : h.close().catch(() => undefined)));
  }
}

class Errno extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

function errnoOf(err: unknown): number {
  if (err instanceof Errno) return err.errno;
  if (err instanceof SafeResumeError) return err.code === 'INVALID_ARGUMENT' ? ERR.EINVAL : ERR.EIO;
  return ERR.EIO;
}
