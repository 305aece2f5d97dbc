/**
 * An NBD export: unmodified programs (qemu-io, qemu-img, QEMU, nbd clients) use a safe-resume target
 * as a block device. Built only on `Application` and `Handle`: a request waits while its handle is
 * paused, completes after a granted resume, and fails with EIO once the handle is invalidated (or at
 * once, with `onFailure: 'error'`, while storage is away).
 *
 * Protocol: the fixed newstyle handshake of the NBD protocol (doc/proto.md of the NetworkBlockDevice
 * project): options STARTTLS, GO, INFO, LIST, ABORT and EXPORT_NAME; commands READ, WRITE, FLUSH, DISC,
 * TRIM and WRITE_ZEROES, simple replies. The export name is the target. Malformed input gets an NBD
 * error reply or a closed connection, never a crash.
 *
 * Who a connection acts as (docs/security.md): on a Unix socket (`path`), the export's own principal
 * (`app`'s): reaching the socket is the proof, so it belongs in a directory only its owner (or a chosen
 * group) can enter. On TCP every option but STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD until
 * the client has upgraded to TLS with a pre-shared key (TLS-PSK): the PSK identity names the principal,
 * the key is derived from that principal's credential (actors/auth.ts nbdPsk), and the connection acts
 * as that principal. A Unix socket client may upgrade too, and then acts as the principal it proved.
 *
 * A connection opens its target for reading, and takes the write handle at its first write-type
 * request (WRITE, WRITE_ZEROES, TRIM), only if nobody wrote the target since the connection opened
 * it; a read-only client (`qemu-io -r`, `nbdinfo`) never locks the target. Zeros are written as
 * zeros, and the store keeps no page that is all zeros: WRITE_ZEROES and TRIM (which reads back as
 * zeros) free whole pages.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createSecureContext, TLSSocket, type SecureContext, type TLSSocketOptions } from 'node:tls';
import type { Logger } from 'pino';
import { Application, type Handle } from '../actors/application.js';
import { NAME_PATTERN } from '../actors/auth.js';
import { SafeResumeError } from '../errors.js';
import { sourceOf, Unauthenticated } from '../transport/pre-auth.js';
import { realClock } from '../actors/env.js';
import { LogLimiter } from '../actors/log-limit.js';
import { MAX_IO_BYTES } from '../transport/messages.js';
import { MAX_TARGET_BYTES } from '../store/types.js';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7 } as const;
export const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_TLS_REQD: 0x80000005, ERR_UNKNOWN: 0x80000006, ERR_SHUTDOWN: 0x80000007 } as const;
const INFO = { EXPORT: 0, BLOCK_SIZE: 3 } as const;
const TX = { HAS_FLAGS: 1 << 0, SEND_FLUSH: 1 << 2, SEND_FUA: 1 << 3, SEND_TRIM: 1 << 5, SEND_WRITE_ZEROES: 1 << 6 } as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 } as const;
const ERR = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** The longest option a client may send (an export name is at most 4 KiB). */
const MAX_OPTION_BYTES = 8192;
/** The longest request payload taken (larger writes are refused and the connection closed). */
const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** Requests of one connection answered at once; past it the socket is not read. */
const MAX_INFLIGHT = 64;
/** Bytes of one connection's requests in flight (reads reserve theirs) and of replies not yet sent. */
const MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
const MAX_UNSENT_BYTES = 16 * 1024 * 1024;
/** How long a client may take from connecting to the end of the handshake. */
const HANDSHAKE_MS = 10_000;
/** Connections an export holds at once, and of those on TCP, how many may not have proved a principal yet. */
const MAX_CONNECTIONS = 256;
const MAX_UNAUTHENTICATED = 128;
/**
 * Replies to options a client may leave unread during the handshake (a client that sends options and
 * never reads the answers is closed past it), and options answered NBD_REP_ERR_TLS_REQD before
 * STARTTLS (past them the connection is closed): before authentication a peer gets a few KiB.
 */
const MAX_HANDSHAKE_UNSENT_BYTES = 64 * 1024;
const MAX_OPTIONS_BEFORE_TLS = 16;
/** How long a connection refused a place among its principal's is kept to be told why at its next option. */
const REFUSED_GRACE_MS = 2000;
/** How long an open waits for a target another connection of this node is still releasing. */
const LOCKED_RETRY_MS = 2000;
/**
 * How long a GO or INFO waits for the node agent's session when it has none (every replica down, or
 * reconnecting): a blip passes unseen; past it the client is told storage is unavailable
 * (NBD_REP_ERR_SHUTDOWN, "come back later", with the reason), well within its handshake deadline.
 */
const STORAGE_WAIT_MS = 3000;
/** Connections of one principal that finished the handshake, held at once. */
const MAX_CONNECTIONS_PER_PRINCIPAL = 64;
/** A connection with no request for this long is closed (unless requests are still waiting). */
const IDLE_MS = 30 * 60_000;
/** What WRITE_ZEROES and TRIM write, a chunk at a time (the handle copies what it sends). */
const ZEROS = new Uint8Array(MAX_IO_BYTES);
/**
 * TLS with pre-shared keys only (no certificates): TLS 1.3 (its PSK handshake with (EC)DHE, as GnuTLS
 * in QEMU and libnbd makes it); the TLS 1.2 PSK suites listed are what turns OpenSSL's PSK path on.
 */
const PSK_CIPHERS = 'PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';
let pskContext: SecureContext | undefined;

export interface NbdExportOptions {
  /** The application whose handles serve the exports (one write handle per connection). */
  app: Application;
  /**
   * The size exported for a target that has no fixed size (default MAX_TARGET_BYTES, the most such a
   * target holds). A target created with a size (`size` at open, `safe-resume create --size`) is
   * exported with its own.
   */
  size?: (target: string) => number | Promise<number>;
  /**
   * Where to listen: a Unix socket `path` (a connection there acts as `app`'s principal unless it
   * upgrades to TLS), or TCP: a `port` on `host` (default 127.0.0.1, port 0: a free one), where only a
   * client that proves a principal with TLS-PSK gets anything. One of the two must be given.
   */
  host?: string;
  port?: number;
  path?: string;
  /**
   * The TLS pre-shared key of a principal, or undefined for one this export cannot verify (its TLS
   * handshake fails). Default: what `app`'s node agent can derive (`agent.nbdPsk`: the principals
   * whose credential it holds, or all with the cluster key).
   */
  psk?: (principal: string) => Buffer | undefined;
  /**
   * The application a connection proven as `principal` acts through. Default: `app` for its own
   * principal, otherwise one application per principal on `app`'s node agent (`<app.name>:<principal>`).
   */
  appFor?: (principal: string) => Application;
  /** `pause` (default): requests wait through storage failures. `error`: they fail with EIO at once. */
  onFailure?: 'pause' | 'error';
  log?: Logger;
  /** Told when a connection's handle is invalidated (target, reason), for status and the inspector. */
  onInvalidated?: (target: string, reason: string) => void;
  /**
   * Told of every handle a connection serves requests through (its read handle, then its write handle),
   * once it is open: the node follows its changes of state for the timeline.
   */
  onHandle?: (handle: Handle, target: string) => void;
  /** How long a client may take to finish the handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  /**
   * Connections of one principal that finished the handshake, held at once (default 64); past it a
   * client is refused at `NBD_OPT_GO` with `NBD_REP_ERR_POLICY` and the reason.
   */
  maxConnectionsPerPrincipal?: number;
  /**
   * A connection that sends no request for this long is closed (default 30 minutes; 0: never), but
   * not while requests are still waiting (a paused handle's).
   */
  idleTimeoutMs?: number;
}

/** What `status` shows of an export connection. */
export interface NbdConnectionView {
  target: string;
  /** The principal the connection acts as (the one it proved). */
  principal: string;
  state: string;
  reason?: string | undefined;
  requests: number;
}

class ProtocolError extends Error {}

/** Connections admitted per principal (those that finished the handshake and are not closed yet). */
class Admission {
  private readonly held = new Map<string, number>();
  constructor(readonly max: number) {}

  /** Take a place for `principal`; false if it holds `max` already. */
  take(principal: string): boolean {
    const n = this.held.get(principal) ?? 0;
    if (n >= this.max) return false;
    this.held.set(principal, n + 1);
    return true;
  }

  give(principal: string): void {
    const n = (this.held.get(principal) ?? 0) - 1;
    if (n > 0) this.held.set(principal, n);
    else this.held.delete(principal);
  }
}

export class NbdExport {
  private server: Server | undefined;
  private readonly conns = new Set<Connection>();
  private readonly admission: Admission;
  private readonly apps = new Map<string, Application>();
  /** Warnings clients can cause (a broken handshake, an unknown principal, a refused place), rate-limited. */
  private readonly warnings = new LogLimiter(realClock);
  url = '';

  constructor(private readonly opts: NbdExportOptions) {
    this.admission = new Admission(opts.maxConnectionsPerPrincipal ?? MAX_CONNECTIONS_PER_PRINCIPAL);
  }

  /** The application a connection proven as `principal` acts through. */
  private appFor(principal: string): Application {
    if (this.opts.appFor) return this.opts.appFor(principal);
    const { app } = this.opts;
    if (principal === app.principal) return app;
    let a = this.apps.get(principal);
    if (!a) this.apps.set(principal, (a = new Application(app.agent, { name: `${app.name}:${principal}`, principal })));
    return a;
  }

  /** The key `identity` proves itself with, if it names a principal this export can verify. */
  private keyFor(identity: string): Buffer | undefined {
    if (!NAME_PATTERN.test(identity)) return undefined;
    return this.opts.psk ? this.opts.psk(identity) : this.opts.app.agent.nbdPsk(identity);
  }

  async listen(): Promise<string> {
    if (this.opts.path === undefined && this.opts.port === undefined) throw new SafeResumeError('INVALID_ARGUMENT', 'an NBD export needs a Unix socket path, or a TCP port (where clients must use TLS-PSK)');
    const auth: Auth = {
      tlsOnly: this.opts.path === undefined,
      local: this.opts.path !== undefined ? this.opts.app : undefined,
      keyFor: (identity) => this.keyFor(identity),
      appFor: (principal) => this.appFor(principal),
      warn: (kind, fields, message) => {
        const t = this.warnings.take(kind);
        if (t.log) this.opts.log?.warn(t.suppressed > 0 ? { ...fields, suppressed: t.suppressed } : fields, t.suppressed > 0 ? `${message} (and ${t.suppressed} more like it left out)` : message);
      },
    };
    // On TCP a connection counts as unauthenticated until its TLS handshake proves a principal, and
    // those are held fairly (transport/pre-auth.ts): one source holds at most a quarter of the places,
    // and a new connection makes room by dropping the oldest of the source holding the most, so a flood
    // of silent connections from one address cannot keep a client with a key out.
    const pre = auth.tlsOnly ? new Unauthenticated(MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED / 4) : undefined;
    const server = createServer((socket) => {
      let trusted = (): void => undefined;
      if (pre) {
        const { remove, limited } = pre.admit(sourceOf(socket.remoteAddress), () => socket.bytesRead === 0, () => socket.destroy());
        trusted = remove;
        if (limited) auth.warn('pre-auth limit', { ...limited }, 'nbd: a source holds too many connections that have not proved a principal; its oldest are dropped');
      }
      const c = new Connection(socket, this.opts, auth, this.admission, () => {
        trusted();
        this.conns.delete(c);
      }, trusted);
      this.conns.add(c);
    });
    server.maxConnections = MAX_CONNECTIONS;
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
      this.url = `nbds://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/`;
    }
    return this.url;
  }

  /** The URL a client opens `target` with (`nbd+unix:///target?socket=path`, or `nbds://host:port/target`: TLS). */
  urlFor(target: string): string {
    return targetUrl(this.url, target);
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

/**
 * The URL of `target` at an export whose URL is `base` (`nbd+unix:///?socket=path` or
 * `nbds://host:port/`, as `NbdExport.url` and `status` give it).
 */
export function targetUrl(base: string, target: string): string {
  const name = encodeURIComponent(target);
  return base.startsWith('nbd+unix:///?') ? `nbd+unix:///${name}${base.slice('nbd+unix:///'.length)}` : `${base}${name}`;
}

/** How an export authenticates its connections. */
interface Auth {
  /** TCP: nothing but STARTTLS and ABORT before TLS. */
  tlsOnly: boolean;
  /** A Unix socket's: the application a connection acts through until it proves another principal. */
  local: Application | undefined;
  keyFor: (identity: string) => Buffer | undefined;
  appFor: (principal: string) => Application;
  /** Log a warning a client can cause, rate-limited per kind (actors/log-limit.ts). */
  warn: (kind: string, fields: Record<string, unknown>, message: string) => void;
}

/** One client connection: the handshake, then transmission over one handle. */
class Connection {
  /**
   * The principal this connection acts as and is counted under: the export's own on a Unix socket, or
   * the one it proved with TLS-PSK ('' until then).
   */
  principal: string;
  /** Whether the connection runs over TLS (after STARTTLS). */
  private secure = false;
  /** The application its handles are opened through (undefined until it is authenticated). */
  private app: Application | undefined;
  /** What the client sent and was not taken yet, as it arrived (joined only for one message). */
  private chunks: Buffer[] = [];
  private have = 0;
  private inflightBytes = 0;
  private released = false;
  private readonly deadline: NodeJS.Timeout;
  private phase: 'flags' | 'options' | 'transmission' | 'closed' = 'flags';
  private noZeroes = false;
  private busy = false;
  /** The handle serving requests: a read handle until the first write-type request, then a write handle. */
  private handle: Handle | undefined;
  /** The target's version when the read handle opened: the write handle is taken only at this version. */
  private openedAt = 0;
  /** The write handle being taken (shared by the write-type requests that wait for it). */
  private upgrading: Promise<Handle> | undefined;
  /** Why the connection's requests fail: the target changed before it could be written (MODIFIED). */
  private invalid: string | undefined;
  /** Requests the current read handle is serving (it is closed once they are answered). */
  private readonly reads = new Set<Promise<unknown>>();
  /** Whether the connection holds its place among its principal's (Admission), or why it was refused one. */
  private admitted = false;
  private refusal: string | undefined;
  private refusalTimer: NodeJS.Timeout | undefined;
  /** Options answered NBD_REP_ERR_TLS_REQD so far. */
  private beforeTls = 0;
  private idle: NodeJS.Timeout | undefined;
  private target = '';
  private size = 0;
  private inflight = 0;
  private readonly writes = new Set<Promise<unknown>>();
  /** Every request being served (DISC answers them first). */
  private readonly pending = new Set<Promise<void>>();
  private disconnecting = false;

  constructor(
    private socket: Socket,
    private readonly opts: NbdExportOptions,
    private readonly auth: Auth,
    private readonly admission: Admission,
    private readonly gone: () => void,
    /** The connection proved a principal (it no longer counts as unauthenticated). */
    private readonly trusted: () => void = () => undefined,
  ) {
    this.app = auth.local;
    this.principal = auth.local?.principal ?? '';
    if (this.app) this.claim();
    socket.setNoDelay(true);
    this.listenTo(socket);
    this.deadline = setTimeout(() => {
      if (this.phase !== 'transmission') this.fail(new ProtocolError('the handshake did not finish in time'));
    }, opts.handshakeTimeoutMs ?? HANDSHAKE_MS);
    this.deadline.unref();
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    socket.write(hello);
  }

  /** Read from `socket` (the client's TCP or Unix socket, then the TLS socket over it). */
  private listenTo(socket: Socket): void {
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
    if (!this.handle) return undefined;
    if (this.invalid) return { target: this.target, principal: this.principal, state: 'invalidated', reason: this.invalid, requests: this.inflight };
    return { target: this.target, principal: this.principal, state: this.handle.state, reason: this.handle.reason, requests: this.inflight };
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** The first `n` bytes received (one copy only if they span chunks), or undefined if fewer arrived. */
  private peek(n: number): Buffer | undefined {
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
  private consume(n: number): void {
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
  private roomFor(bytes: number): boolean {
    return this.inflight < MAX_INFLIGHT && (this.inflight === 0 || this.inflightBytes + bytes <= MAX_INFLIGHT_BYTES) && this.socket.writableLength <= MAX_UNSENT_BYTES;
  }

  /** Take what arrived, one message at a time (an option waits for its answer first; the socket is not read meanwhile). */
  private pump(): void {
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
          if (this.socket.writableLength > MAX_HANDSHAKE_UNSENT_BYTES) throw new ProtocolError('the client does not read the answers to its options');
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
          const type = head.readUInt16BE(6);
          const cookie = head.readBigUInt64BE(8);
          const offset = head.readBigUInt64BE(16);
          const length = head.readUInt32BE(24);
          const payload = type === CMD.WRITE ? length : 0;
          if (length > MAX_REQUEST_BYTES && (type === CMD.WRITE || type === CMD.READ)) throw new ProtocolError(`a request of ${length} bytes`);
          // Past the connection's budget nothing more is read until replies go out. Zeros cost what
          // writing them does (a request of more than the budget is taken alone).
          const cost = type === CMD.WRITE || type === CMD.READ || type === CMD.WRITE_ZEROES || type === CMD.TRIM ? length : 0;
          if (!this.roomFor(cost)) {
            this.socket.pause();
            return;
          }
          const whole = this.peek(28 + payload);
          if (!whole) return this.resume();
          const data = payload > 0 ? Buffer.from(whole.subarray(28)) : undefined;
          this.consume(28 + payload);
          this.touch();
          this.request(type, cookie, offset, length, data, cost);
        } else return;
      }
    } catch (err) {
      this.fail(err);
    }
  }

  private resume(): void {
    if (this.socket.isPaused() && !this.busy && this.phase !== 'closed') this.socket.resume();
  }

  private fail(err: unknown): void {
    this.auth.warn(this.app ? 'connection closed' : 'unauthenticated connection closed', { err: String(err), ...(this.target ? { target: this.target } : {}) }, 'nbd connection closed');
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

  /**
   * NBD_OPT_STARTTLS: ACK, then the TLS handshake over the same socket; the client proves a principal
   * with its pre-shared key (identity: the principal's name) and the connection acts as it from then on.
   */
  private async startTls(data: Buffer): Promise<void> {
    if (this.secure) return this.reply(OPT.STARTTLS, REP.ERR_INVALID, Buffer.from('TLS is already on'));
    if (data.length !== 0) return this.reply(OPT.STARTTLS, REP.ERR_INVALID, Buffer.from('STARTTLS takes no data'));
    // The client waits for the ACK before its TLS hello: bytes already here are not part of TLS.
    if (this.have > 0) throw new ProtocolError('data sent after STARTTLS before its reply');
    this.reply(OPT.STARTTLS, REP.ACK);
    const raw = this.socket;
    let proved = '';
    pskContext ??= createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.3' });
    // Node takes `pskCallback` for a server-side TLSSocket too (@types/node 20 declares it for tls.createServer only).
    const options: TLSSocketOptions & { pskCallback: (socket: TLSSocket, identity: string) => Buffer | null } = {
      isServer: true,
      secureContext: pskContext,
      pskCallback: (_socket, identity) => {
        const key = this.auth.keyFor(identity);
        if (key) proved = identity;
        else this.auth.warn('unknown principal', { principal: identity.slice(0, 128) }, 'nbd client refused: it names a principal this export cannot verify (no credential for it on this node)');
        return key ?? null;
      },
    };
    const tls = new TLSSocket(raw, options);
    this.socket = tls;
    this.listenTo(tls);
    // Options sent before STARTTLS are forgotten (the NBD protocol): only the connection's identity changes.
    await new Promise<void>((resolve, reject) => {
      tls.once('secure', resolve);
      tls.once('error', reject);
      tls.once('close', () => reject(new ProtocolError('the client went away during the TLS handshake')));
    });
    if (!proved) throw new ProtocolError('TLS without a pre-shared key');
    this.secure = true;
    this.trusted();
    this.unadmit();
    this.principal = proved;
    this.app = this.auth.appFor(proved);
    this.claim();
  }

  private async option(option: number, data: Buffer): Promise<void> {
    if (option === OPT.STARTTLS) return this.startTls(data);
    if (!this.app) {
      // TLS only (TCP): nothing is answered, listed or opened before the client has proved a principal.
      if (option === OPT.EXPORT_NAME) throw new ProtocolError('EXPORT_NAME before STARTTLS: this export requires TLS');
      if (option !== OPT.ABORT && ++this.beforeTls > MAX_OPTIONS_BEFORE_TLS) throw new ProtocolError(`${MAX_OPTIONS_BEFORE_TLS} options before STARTTLS: this export requires TLS`);
      if (option !== OPT.ABORT) return this.reply(option, REP.ERR_TLS_REQD, Buffer.from('this export requires TLS: send NBD_OPT_STARTTLS and prove a principal with its pre-shared key'));
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
        const refused = this.admit();
        if (refused) throw new ProtocolError(refused);
        const ok = await this.attach(name);
        if (this.phase === 'closed') return;
        if (!ok.ok) throw new ProtocolError(`export ${JSON.stringify(name)} could not be opened: ${ok.message}`);
        const out = Buffer.alloc(this.noZeroes ? 10 : 134);
        out.writeBigUInt64BE(BigInt(this.size), 0);
        out.writeUInt16BE(this.flags(), 8);
        this.socket.write(out);
        this.phase = 'transmission';
        this.touch();
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
        if (option === OPT.GO) {
          const refused = this.admit();
          if (refused) return this.reply(option, REP.ERR_POLICY, Buffer.from(refused));
        }
        const ok = option === OPT.GO ? await this.attach(name) : await this.sizeOf(name);
        if (this.phase === 'closed') return;
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
        if (option === OPT.GO) {
          this.phase = 'transmission';
          this.touch();
        }
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
      const size = this.opts.size ? await this.opts.size(name) : MAX_TARGET_BYTES;
      return { ok: true, size };
    } catch (err) {
      return { ok: false, code: REP.ERR_UNKNOWN, message: String((err as Error).message) };
    }
  }

  /** The size a target would be exported with, learnt through a read handle open for a moment (INFO). */
  private async sizeOf(name: string): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }> {
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
   * Take a place for this connection among its principal's as soon as it is known who it acts as (at
   * connect on a Unix socket, when its TLS handshake proves a principal), so a connection that proved
   * a principal and never asks for an export still counts. A refused one is told why at its next option
   * (NBD_REP_ERR_POLICY) and closed soon after; a warning is logged.
   */
  private claim(): void {
    clearTimeout(this.refusalTimer);
    this.refusal = undefined;
    if (this.admission.take(this.principal)) {
      this.admitted = true;
      return;
    }
    const why = `principal ${JSON.stringify(this.principal)} holds ${this.admission.max} connections to this export already (the most it may): close one and connect again`;
    this.auth.warn('principal connection limit', { principal: this.principal, max: this.admission.max }, 'nbd connection refused: too many connections of one principal');
    this.refusal = why;
    this.refusalTimer = setTimeout(() => this.fail(new ProtocolError(why)), REFUSED_GRACE_MS);
    this.refusalTimer.unref();
  }

  /** Why this connection may not open an export (it holds no place among its principal's), if so. */
  private admit(): string | undefined {
    return this.admitted ? undefined : this.refusal;
  }

  /** Give back this connection's place among its principal's. */
  private unadmit(): void {
    if (!this.admitted) return;
    this.admitted = false;
    this.admission.give(this.principal);
  }

  /** A request arrived: the idle time starts again. */
  private touch(): void {
    const ms = this.opts.idleTimeoutMs ?? IDLE_MS;
    if (ms <= 0 || this.phase !== 'transmission') return;
    clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      // Requests still waiting (a paused handle's) keep the connection: it is not idle.
      if (this.inflight > 0 || this.disconnecting) return this.touch();
      this.opts.log?.warn({ target: this.target, principal: this.principal, idleMs: ms }, 'nbd connection closed: no request for the idle time');
      this.phase = 'closed';
      this.socket.destroy();
    }, ms);
    this.idle.unref();
  }

  /**
   * Open `name` with `mode`; a write open retries briefly while the target is LOCKED (a client
   * reconnecting at once may find its previous connection still releasing it).
   */
  private async openAs(name: string, mode: 'read' | 'write'): Promise<Handle> {
    for (const until = Date.now() + LOCKED_RETRY_MS; ; ) {
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
  private use(handle: Handle): void {
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
  private async storageDown(): Promise<{ ok: false; code: number; message: string } | undefined> {
    const agent = this.app!.agent;
    for (const until = Date.now() + STORAGE_WAIT_MS; agent.state !== 'connected'; ) {
      if (Date.now() >= until || this.phase === 'closed') {
        return { ok: false, code: REP.ERR_SHUTDOWN, message: `storage is unavailable: ${agent.id} has no session with any replica (${agent.state}); connect again once a replica is back` };
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return undefined;
  }

  /** Open the target for this connection (a read handle: the write handle is taken at the first write). */
  private async attach(name: string): Promise<{ ok: true; size: number } | { ok: false; code: number; message: string }> {
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
  private writable(): Promise<Handle> {
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
  private async upgrade(reader: Handle): Promise<Handle> {
    let writer: Handle;
    try {
      writer = await this.openAs(this.target, 'write');
    } catch (err) {
      const code = err instanceof SafeResumeError ? err.code : 'ERROR';
      this.opts.log?.warn({ target: this.target, code }, 'nbd write refused: the target could not be opened for writing');
      throw new Errno(ERR.EIO, `${this.target} could not be opened for writing: ${code}: ${(err as Error).message}`);
    }
    if (this.phase === 'closed' || this.released) {
      await writer.close().catch(() => undefined);
      throw new Errno(ERR.ESHUTDOWN, 'the client went away');
    }
    if (writer.version !== this.openedAt || reader.state === 'invalidated') {
      await writer.close().catch(() => undefined);
      this.invalid = 'MODIFIED';
      this.opts.log?.warn({ target: this.target, opened: this.openedAt, now: writer.version }, 'nbd export invalidated: the target was written by another writer since this connection opened it; requests fail with EIO');
      this.opts.onInvalidated?.(this.target, 'MODIFIED');
      throw new Errno(ERR.EIO, `${this.target} was modified by another writer since this connection opened it (MODIFIED)`);
    }
    this.use(writer);
    // The read handle goes once the reads it serves are answered.
    const reads = [...this.reads];
    this.reads.clear();
    void Promise.allSettled(reads).then(() => reader.close().catch(() => undefined));
    return writer;
  }

  private request(type: number, cookie: bigint, offset: bigint, length: number, data: Buffer | undefined, cost: number): void {
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
    const p = this.serve(type, offset, length, data).then(
      (out) => this.answer(cookie, 0, out, cost),
      (err: unknown) => this.answer(cookie, errnoOf(err), undefined, cost),
    );
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }

  private answer(cookie: bigint, error: number, data: Uint8Array | undefined, cost: number): void {
    this.inflight--;
    this.inflightBytes -= cost;
    if (this.phase === 'closed' || this.socket.writableEnded) return;
    const h = Buffer.alloc(16);
    h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(error, 4);
    h.writeBigUInt64BE(cookie, 8);
    this.socket.write(data && error === 0 ? Buffer.concat([h, data]) : h);
    if (!this.disconnecting) this.pump();
  }

  private async serve(type: number, offset: bigint, length: number, data: Buffer | undefined): Promise<Uint8Array | undefined> {
    const h = this.handle!;
    if (this.invalid) throw new Errno(ERR.EIO, `${this.target} was invalidated (${this.invalid})`);
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

  private closed(): void {
    this.gone();
    this.phase = 'closed';
    clearTimeout(this.deadline);
    clearTimeout(this.idle);
    clearTimeout(this.refusalTimer);
    this.unadmit();
    this.chunks = [];
    this.have = 0;
    // The handle goes once its writes are answered (a client that vanished leaves nothing held).
    void Promise.allSettled([...this.writes]).then(() => this.release());
  }

  /** Close the handle once (an invalidated one too, so the application forgets it). */
  private async release(): Promise<void> {
    const h = this.handle;
    if (!h || this.released) return;
    this.released = true;
    if (h.state !== 'closed') await h.close().catch(() => undefined);
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
