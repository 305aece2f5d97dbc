/**
 * One NBD client connection through its handshake: what arrives taken one message at a time, the
 * options (STARTTLS, GO, INFO, LIST, ABORT, EXPORT_NAME, STRUCTURED_REPLY, LIST_META_CONTEXT and
 * SET_META_CONTEXT: nbd-meta.ts) answered, the connection's place among its
 * principal's, and its idle time. Transmission (nbd-connection.ts) serves the requests.
 */
import type { Socket } from 'node:net';
import type { Application } from '../actors/application.js';
import {
  HANDSHAKE_MS,
  IDLE_MS,
  MAX_HANDSHAKE_UNSENT_BYTES,
  MAX_INFLIGHT,
  MAX_INFLIGHT_BYTES,
  MAX_OPTION_BYTES,
  MAX_OPTIONS_BEFORE_TLS,
  MAX_REQUEST_BYTES,
  MAX_UNSENT_BYTES,
  type Admission,
} from './nbd-limits.js';
import type { Auth, NbdConnectionView, NbdExportOptions } from './nbd-options.js';
import { blockSizeInfo, exportInfo, exportNameReply, greeting, infoRequest } from './nbd-option-data.js';
import { metaOption } from './nbd-meta.js';
import { Place } from './nbd-place.js';
import type { SharedHandle } from './nbd-shared.js';
import { tlsHandshake, tlsServerSocket } from './nbd-tls.js';
import {
  CMD,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  OPT,
  ProtocolError,
  REP,
  REPLY_MAGIC,
  REQUEST_MAGIC,
  TX,
} from './nbd-wire.js';

/** One client connection up to transmission: its handshake (Connection, in nbd-connection.ts, serves its requests). */
export abstract class NbdHandshake {
  /**
   * The principal this connection acts as and is counted under: the export's own on a Unix socket, or
   * the one it proved with TLS-PSK ('' until then).
   */
  principal: string;
  /** Whether the connection runs over TLS (after STARTTLS). */
  protected secure = false;
  /** The application its handles are opened through (undefined until it is authenticated). */
  protected app: Application | undefined;
  /** What the client sent and was not taken yet, as it arrived (joined only for one message). */
  protected chunks: Buffer[] = [];
  protected have = 0;
  protected inflightBytes = 0;
  protected released = false;
  protected readonly deadline: NodeJS.Timeout;
  protected phase: 'flags' | 'options' | 'transmission' | 'closed' = 'flags';
  protected noZeroes = false;
  /** The client negotiated structured replies (NBD_OPT_STRUCTURED_REPLY): its requests are answered in them. */
  protected structured = false;
  /** The export name SET_META_CONTEXT last selected `base:allocation` for (BLOCK_STATUS only on that export). */
  protected metaFor: string | undefined;
  protected busy = false;
  /**
   * The handle serving requests, shared with the principal's other connections to the target
   * (nbd-shared.ts): a read handle until the first write-type request on any of them, then a write handle.
   */
  protected shared: SharedHandle | undefined;
  /** The connection's place among its principal's (nbd-place.ts). */
  protected readonly place: Place;
  /** Options answered NBD_REP_ERR_TLS_REQD so far. */
  protected beforeTls = 0;
  protected idle: NodeJS.Timeout | undefined;
  protected target = '';
  protected size = 0;
  protected inflight = 0;
  protected readonly writes = new Set<Promise<unknown>>();
  /** Every request being served (DISC answers them first). */
  protected readonly pending = new Set<Promise<void>>();
  protected disconnecting = false;

  constructor(
    protected socket: Socket,
    protected readonly opts: NbdExportOptions,
    protected readonly auth: Auth,
    protected readonly admission: Admission,
    protected readonly gone: () => void,
    /** The connection proved a principal (it no longer counts as unauthenticated). */
    protected readonly trusted: () => void = () => undefined,
  ) {
    this.app = auth.local;
    this.principal = auth.local?.principal ?? '';
    this.place = new Place(admission, auth, (err) => this.fail(err));
    if (this.app) this.place.claim(this.principal);
    socket.setNoDelay(true);
    this.listenTo(socket);
    this.deadline = setTimeout(() => {
      if (this.phase !== 'transmission') this.fail(new ProtocolError('the handshake did not finish in time'));
    }, opts.handshakeTimeoutMs ?? HANDSHAKE_MS);
    this.deadline.unref();
    socket.write(greeting());
  }

  /** Read from `socket` (the client's TCP or Unix socket, then the TLS socket over it). */
  protected listenTo(socket: Socket): void {
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => {
      if (this.phase === 'closed' || socket !== this.socket) return;
      this.chunks.push(d);
      this.have += d.length;
      this.pump();
    });
    socket.on('drain', () => socket === this.socket && this.pump());
    socket.once('close', () => this.closed());
  }

  view(): NbdConnectionView | undefined {
    const handle = this.shared?.handle;
    if (!handle) return undefined;
    if (this.shared?.invalid)
      return {
        target: this.target,
        principal: this.principal,
        state: 'invalidated',
        reason: this.shared.invalid,
        requests: this.inflight,
      };
    return {
      target: this.target,
      principal: this.principal,
      state: handle.state,
      reason: handle.reason,
      requests: this.inflight,
    };
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** The first `n` bytes received (one copy only if they span chunks), or undefined if fewer arrived. */
  protected peek(n: number): Buffer | undefined {
    if (this.have < n) return undefined;
    if (this.chunks[0]!.length >= n) return this.chunks[0]!.subarray(0, n);
    const parts: Buffer[] = [];
    for (let got = 0, i = 0; got < n; i++) {
      const c = this.chunks[i]!;
      parts.push(c.subarray(0, Math.min(c.length, n - got)));
      got += Math.min(c.length, n - got);
    }
    return Buffer.concat(parts, n);
  }

  /** Drop the first `n` bytes received. */
  protected consume(n: number): void {
    this.have -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      if (c.length <= n) {
        this.chunks.shift();
        n -= c.length;
      } else {
        this.chunks[0] = c.subarray(n);
        n = 0;
      }
    }
  }

  /** Whether this connection may take another request now (requests, bytes in flight, replies unsent). */
  protected roomFor(bytes: number): boolean {
    return (
      this.inflight < MAX_INFLIGHT &&
      (this.inflight === 0 || this.inflightBytes + bytes <= MAX_INFLIGHT_BYTES) &&
      this.socket.writableLength <= MAX_UNSENT_BYTES
    );
  }

  /** Take what arrived, one message at a time (an option waits for its answer first; the socket is not read meanwhile). */
  protected pump(): void {
    if (this.phase === 'closed') return;
    if (this.busy) {
      this.socket.pause();
      return;
    }
    try {
      for (;;) {
        if (this.phase === 'flags') {
          const head = this.peek(4);
          if (!head) return this.resume();
          const flags = head.readUInt32BE(0);
          this.consume(4);
          if (!(flags & FLAG_FIXED_NEWSTYLE)) throw new ProtocolError('the client does not speak fixed newstyle');
          this.noZeroes = (flags & FLAG_NO_ZEROES) !== 0;
          this.phase = 'options';
        } else if (this.phase === 'options') {
          const head = this.peek(16);
          if (!head) return this.resume();
          if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError('bad option magic');
          if (this.socket.writableLength > MAX_HANDSHAKE_UNSENT_BYTES)
            throw new ProtocolError('the client does not read the answers to its options');
          const option = head.readUInt32BE(8);
          const length = head.readUInt32BE(12);
          if (length > MAX_OPTION_BYTES) throw new ProtocolError(`option of ${length} bytes`);
          const whole = this.peek(16 + length);
          if (!whole) return this.resume();
          const data = Buffer.from(whole.subarray(16));
          this.consume(16 + length);
          this.busy = true;
          this.socket.pause();
          void this.option(option, data).then(
            () => {
              this.busy = false;
              if (this.phase === 'transmission') clearTimeout(this.deadline);
              this.pump();
            },
            (err: unknown) => this.fail(err),
          );
          return;
        } else if (this.phase === 'transmission') {
          const head = this.peek(28);
          if (!head) return this.resume();
          if (head.readUInt32BE(0) !== REQUEST_MAGIC) throw new ProtocolError('bad request magic');
          const flags = head.readUInt16BE(4);
          const type = head.readUInt16BE(6);
          const cookie = head.readBigUInt64BE(8);
          const offset = head.readBigUInt64BE(16);
          const length = head.readUInt32BE(24);
          const payload = type === CMD.WRITE ? length : 0;
          if (length > MAX_REQUEST_BYTES && (type === CMD.WRITE || type === CMD.READ))
            throw new ProtocolError(`a request of ${length} bytes`);
          // Past the connection's budget nothing more is read until replies go out. Zeros cost what
          // writing them does (a request of more than the budget is taken alone).
          const cost =
            type === CMD.WRITE || type === CMD.READ || type === CMD.WRITE_ZEROES || type === CMD.TRIM ? length : 0;
          if (!this.roomFor(cost)) {
            this.socket.pause();
            return;
          }
          const whole = this.peek(28 + payload);
          if (!whole) return this.resume();
          const data = payload > 0 ? Buffer.from(whole.subarray(28)) : undefined;
          this.consume(28 + payload);
          this.touch();
          this.request(type, cookie, offset, length, data, cost, flags);
        } else return;
      }
    } catch (err) {
      this.fail(err);
    }
  }

  protected resume(): void {
    if (this.socket.isPaused() && !this.busy && this.phase !== 'closed') this.socket.resume();
  }

  protected fail(err: unknown): void {
    this.auth.warn(
      this.app ? 'connection closed' : 'unauthenticated connection closed',
      { err: String(err), ...(this.target ? { target: this.target } : {}) },
      'nbd connection closed',
    );
    this.phase = 'closed';
    this.socket.destroy();
  }

  protected reply(option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(REPLY_MAGIC, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(data.length, 16);
    this.socket.write(data.length > 0 ? Buffer.concat([h, data]) : h);
  }

  /**
   * NBD_OPT_STARTTLS: ACK, then the TLS handshake over the same socket; the client proves a principal
   * with its pre-shared key (identity: the principal's name) and the connection acts as it from then on.
   */
  protected async startTls(data: Buffer): Promise<void> {
    if (this.secure) return this.reply(OPT.STARTTLS, REP.ERR_INVALID, Buffer.from('TLS is already on'));
    if (data.length !== 0) return this.reply(OPT.STARTTLS, REP.ERR_INVALID, Buffer.from('STARTTLS takes no data'));
    // The client waits for the ACK before its TLS hello: bytes already here are not part of TLS.
    if (this.have > 0) throw new ProtocolError('data sent after STARTTLS before its reply');
    this.reply(OPT.STARTTLS, REP.ACK);
    const { tls, proved } = tlsServerSocket(this.socket, this.auth);
    this.socket = tls;
    this.listenTo(tls);
    // Options sent before STARTTLS are forgotten (the NBD protocol): structured replies and metadata
    // contexts are negotiated again, and the connection's identity changes.
    this.structured = false;
    this.metaFor = undefined;
    await tlsHandshake(tls);
    if (!proved()) throw new ProtocolError('TLS without a pre-shared key');
    this.secure = true;
    this.trusted();
    this.place.give(this.principal);
    this.principal = proved();
    this.app = this.auth.appFor(this.principal);
    this.place.claim(this.principal);
  }

  protected async option(option: number, data: Buffer): Promise<void> {
    if (option === OPT.STARTTLS) return this.startTls(data);
    if (!this.app) {
      // TLS only (TCP): nothing is answered, listed or opened before the client has proved a principal.
      if (option === OPT.EXPORT_NAME) throw new ProtocolError('EXPORT_NAME before STARTTLS: this export requires TLS');
      if (option !== OPT.ABORT && ++this.beforeTls > MAX_OPTIONS_BEFORE_TLS)
        throw new ProtocolError(`${MAX_OPTIONS_BEFORE_TLS} options before STARTTLS: this export requires TLS`);
      if (option !== OPT.ABORT)
        return this.reply(
          option,
          REP.ERR_TLS_REQD,
          Buffer.from('this export requires TLS: send NBD_OPT_STARTTLS and prove a principal with its pre-shared key'),
        );
    }
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
        const refused = this.place.refused();
        if (refused) throw new ProtocolError(refused);
        const ok = await this.attach(name);
        if (this.phase === 'closed') return;
        if (!ok.ok) throw new ProtocolError(`export ${JSON.stringify(name)} could not be opened: ${ok.message}`);
        this.socket.write(exportNameReply(this.size, this.flags(), this.noZeroes));
        this.phase = 'transmission';
        this.touch();
        return;
      }
      case OPT.INFO:
      case OPT.GO: {
        const req = infoRequest(data);
        if (typeof req === 'string') return this.reply(option, REP.ERR_INVALID, Buffer.from(req));
        const { name, want } = req;
        if (option === OPT.GO) {
          const refused = this.place.refused();
          if (refused) return this.reply(option, REP.ERR_POLICY, Buffer.from(refused));
        }
        const ok = option === OPT.GO ? await this.attach(name) : await this.sizeOf(name);
        if (this.phase === 'closed') return;
        if (!ok.ok) return this.reply(option, ok.code, Buffer.from(ok.message));
        this.reply(option, REP.INFO, exportInfo(ok.size, this.flags()));
        if (want.has(INFO.BLOCK_SIZE)) this.reply(option, REP.INFO, blockSizeInfo());
        this.reply(option, REP.ACK);
        if (option === OPT.GO) {
          this.phase = 'transmission';
          this.touch();
        }
        return;
      }
      case OPT.STRUCTURED_REPLY:
        if (data.length !== 0)
          return this.reply(option, REP.ERR_INVALID, Buffer.from('STRUCTURED_REPLY takes no data'));
        this.structured = true;
        return this.reply(option, REP.ACK);
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT: {
        const { replies, selected } = metaOption(option, data, this.structured);
        if (selected !== undefined) this.metaFor = selected ?? undefined;
        for (const [type, bytes] of replies) this.reply(option, type, bytes);
        return;
      }
      default:
        return this.reply(option, REP.ERR_UNSUP, Buffer.from(`option ${option} is not supported`));
    }
  }

  protected flags(): number {
    return TX.HAS_FLAGS | TX.SEND_FLUSH | TX.SEND_FUA | TX.SEND_TRIM | TX.SEND_WRITE_ZEROES | TX.CAN_MULTI_CONN;
  }

  /** A request arrived: the idle time starts again. */
  protected touch(): void {
    const ms = this.opts.idleTimeoutMs ?? IDLE_MS;
    if (ms <= 0 || this.phase !== 'transmission') return;
    clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      // Requests still waiting (a paused handle's) keep the connection: it is not idle.
      if (this.inflight > 0 || this.disconnecting) return this.touch();
      this.opts.log?.warn(
        { target: this.target, principal: this.principal, idleMs: ms },
        'nbd connection closed: no request for the idle time',
      );
      this.phase = 'closed';
      this.socket.destroy();
    }, ms);
    this.idle.unref();
  }

  /** A transmission request arrived (parsed, its payload read). */
  protected abstract request(
    type: number,
    cookie: bigint,
    offset: bigint,
    length: number,
    data: Buffer | undefined,
    cost: number,
    flags: number,
  ): void;
  /** Open the target for this connection (GO, EXPORT_NAME). */
  protected abstract attach(
    name: string,
  ): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }>;
  /** The size a target would be exported with (INFO). */
  protected abstract sizeOf(
    name: string,
  ): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }>;
  /** The socket closed. */
  protected abstract closed(): void;
}
