/** The WebSocket transport, on `ws`. */
import { createServer as createHttpServer, STATUS_CODES, type Server as HttpServer } from 'node:http';
import type { Socket } from 'node:net';
import { createServer as createHttpsServer } from 'node:https';
import type { SecureContext } from 'node:tls';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { decode, DEFAULT_MAX_FRAME_BYTES, encode, type Decoded } from './codec.js';
import type { Message } from './messages.js';
import { FrameMac, MAC_BYTES } from './frame-mac.js';
import { connectError, isSecureUrl, secureContextOf, type TlsOptions } from './tls.js';
import { sourceOf, Unauthenticated, type Limited } from './pre-auth.js';
import {
  DEFAULT_LISTEN_LIMITS,
  type CloseInfo,
  type Connection,
  type ListenLimits,
  type ListenOptions,
  type Listener,
  type Transport,
} from './types.js';

function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return data;
}

/** The TCP socket under a `ws` WebSocket (not part of its typed API; absent before it opens). */
type Corkable = { cork(): void; uncork(): void; destroyed: boolean };
const socketOf = (ws: WebSocket): Corkable | undefined => (ws as unknown as { _socket?: Corkable })._socket;

/**
 * Client frames carry an all-zero mask, which `ws` then skips applying. Masking guards HTTP
 * intermediaries against forged requests; these connections are node agent to replica, and the
 * XOR pass over every 4 KiB write costs more than the rest of the send.
 */
export const zeroMask = (mask: Buffer) => void mask.fill(0);

class WsConnection implements Connection {
  private frameCb: ((f: Decoded) => void) | undefined;
  private readonly closeCbs: Array<(i: CloseInfo) => void> = [];
  private closed = false;
  private corked: Corkable | undefined;
  private readonly uncork = () => {
    const socket = this.corked;
    this.corked = undefined;
    if (socket && !socket.destroyed) socket.uncork();
  };

  /** Server side: stops counting the bytes of a peer not yet authenticated, and its deadline. */
  private untrusted: (() => void) | undefined;

  /** Frame integrity after the handshake, on links without TLS. */
  private mac: FrameMac | undefined;
  private macRole: 'client' | 'server' = 'client';
  private sealedSeen = false;

  constructor(
    private readonly ws: WebSocket,
    readonly remote: string,
    private readonly maxFrameBytes: number,
    untrusted?: () => void,
    private readonly secure = false,
  ) {
    this.untrusted = untrusted;
    ws.on('message', (data, isBinary) => {
      if (this.mac) return this.openSealed(toBytes(data), isBinary);
      const frame = isBinary ? toBytes(data) : toBytes(data).toString();
      this.frameCb?.(decode(frame, maxFrameBytes));
    });
    ws.on('close', (code, reason) => this.finish({ code, reason: reason.toString() }));
    // An 'error' is always followed by 'close'; a listener keeps it from throwing.
    ws.on('error', () => undefined);
  }

  get isOpen(): boolean {
    return !this.closed && this.ws.readyState === WebSocket.OPEN;
  }

  /**
   * Frames sent together go out in one write: the socket is corked at the first and uncorked by a
   * `process.nextTick`, which runs after the current callback (or, when the send came from a
   * promise job, once the promise-job queue is empty), so many small frames cost one write.
   */
  send(msg: Message): boolean {
    if (!this.isOpen) return false;
    if (!this.corked) {
      const socket = socketOf(this.ws);
      if (socket) {
        socket.cork();
        this.corked = socket;
        process.nextTick(this.uncork);
      }
    }
    if (this.mac) {
      const frame = encode(msg, MAC_BYTES);
      this.mac.seal(frame);
      this.ws.send(frame, { binary: true });
    } else this.ws.send(encode(msg), { binary: true });
    return true;
  }

  protect(key: Uint8Array, role: 'client' | 'server'): void {
    // TLS already protects every byte of the link, and checked the server's certificate.
    if (this.secure) return;
    this.mac = new FrameMac(key, role);
    this.macRole = role;
  }

  /** A frame on a protected connection: its MAC checked and stripped, or the connection dropped. */
  private openSealed(bytes: Uint8Array, isBinary: boolean): void {
    const body = isBinary ? this.mac!.open(bytes) : undefined;
    if (body) {
      this.sealedSeen = true;
      return this.frameCb?.(decode(body, this.maxFrameBytes));
    }
    if (this.macRole === 'client' && !this.sealedSeen) {
      // The replica refused the handshake before it could seal anything: its error still counts.
      const d = decode(isBinary ? bytes : Buffer.from(bytes).toString(), this.maxFrameBytes);
      if (d.ok && d.msg.type === 'error') return this.frameCb?.(d);
    }
    this.ws.terminate();
    this.finish({ code: 1006, reason: 'a frame failed its integrity check (MAC): dropped' });
  }

  close(code = 1000, reason = ''): void {
    if (this.closed) return;
    this.ws.close(code, reason.slice(0, 120));
  }

  terminate(): void {
    this.ws.terminate();
    this.finish({ code: 1006, reason: 'terminated' });
  }

  onFrame(cb: (f: Decoded) => void): void {
    this.frameCb = cb;
  }

  onClose(cb: (i: CloseInfo) => void): void {
    this.closeCbs.push(cb);
  }

  trust(): void {
    this.untrusted?.();
    this.untrusted = undefined;
  }

  get bufferedBytes(): number {
    return this.ws.bufferedAmount;
  }

  pauseReading(): void {
    if (this.isOpen) this.ws.pause();
  }

  resumeReading(): void {
    if (this.isOpen) this.ws.resume();
  }

  onDrain(cb: () => void): void {
    (socketOf(this.ws) as unknown as Socket | undefined)?.on('drain', cb);
  }

  private finish(info: CloseInfo): void {
    if (this.closed) return;
    this.closed = true;
    for (const cb of this.closeCbs) cb(info);
  }
}

/** The upgrade request's headers may not be larger than this (Node's default is 16 KiB). */
const MAX_UPGRADE_HEADER_BYTES = 4096;

/** Anything but a WebSocket upgrade: 426 Upgrade Required, and the connection closes (no keep-alive). */
function upgradeRequired(_req: unknown, res: import('node:http').ServerResponse): void {
  const body = STATUS_CODES[426] ?? 'Upgrade Required';
  res.writeHead(426, { 'Content-Length': Buffer.byteLength(body), 'Content-Type': 'text/plain', Connection: 'close' });
  res.end(body);
}

/** The sockets not yet trusted, by remote address and port (the same for a TLS socket and its TCP one): each one's release. */
type Untrusted = Map<string, () => void>;
const peerKey = (s: Socket) => `${s.remoteAddress}|${s.remotePort}`;

/**
 * Limits from TCP accept on: at most `maxConnections` sockets (Node refuses more at once), at most
 * `maxUnauthenticated` of them not yet trusted and `maxUnauthenticatedPerSource` of those from one
 * source (past either, the oldest of the source that holds the most is destroyed: transport/pre-auth.ts),
 * and each must be trusted (`Connection.trust`, once its peer authenticated) within `preAuthMs` of
 * accept, a fixed deadline that trickled bytes do not move: past it the socket is destroyed.
 */
function guard(server: HttpServer, limits: ListenLimits, onLimit: ((l: Limited) => void) | undefined): Untrusted {
  server.maxConnections = limits.maxConnections;
  server.headersTimeout = Math.min(server.headersTimeout, limits.preAuthMs);
  server.requestTimeout = limits.preAuthMs;
  const max = Math.max(1, limits.maxUnauthenticated);
  const table = new Unauthenticated(
    max,
    Math.min(max, Math.max(1, limits.maxUnauthenticatedPerSource ?? Math.floor(max / 4))),
  );
  const untrusted: Untrusted = new Map();
  server.on('connection', (socket: Socket) => {
    const key = peerKey(socket);
    // Bytes read from the TCP socket, whether HTTP or TLS reads them.
    const { remove, limited } = table.admit(
      sourceOf(socket.remoteAddress),
      () => socket.bytesRead === 0,
      () => socket.destroy(),
    );
    if (limited) onLimit?.(limited);
    const timer = setTimeout(() => socket.destroy(), limits.preAuthMs);
    const release = () => {
      clearTimeout(timer);
      remove();
      if (untrusted.get(key) === release) untrusted.delete(key);
    };
    untrusted.set(key, release);
    socket.once('close', release);
  });
  return untrusted;
}

export interface WebSocketTransportOptions {
  /** The largest frame accepted; larger ones answer FRAME_TOO_LARGE. */
  maxFrameBytes?: number;
  /** Serve and connect over TLS (`wss://`); see docs/tls.md. */
  tls?: TlsOptions;
}

/** A TLS peer that has not finished its handshake by then is dropped (before authentication a peer gets a few seconds). */
const TLS_HANDSHAKE_TIMEOUT_MS = 5000;

export class WebSocketTransport implements Transport {
  private readonly maxFrameBytes: number;
  private readonly tls: TlsOptions | undefined;
  /** The client side's TLS context, built once (and so checked at construction). */
  private readonly clientContext: SecureContext | undefined;

  /** `new WebSocketTransport()`, `new WebSocketTransport(maxFrameBytes)` or `new WebSocketTransport({ maxFrameBytes, tls })`. */
  constructor(opts: number | WebSocketTransportOptions = {}) {
    const o = typeof opts === 'number' ? { maxFrameBytes: opts } : opts;
    this.maxFrameBytes = o.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.tls = o.tls;
    this.clientContext = o.tls ? secureContextOf(o.tls) : undefined;
  }

  /**
   * Serve `ws://`, or `wss://` when the transport has TLS: an HTTPS server with this process's
   * certificate and `ws` on top of it. A peer whose TLS handshake fails (a plaintext client, an
   * untrusted client certificate, a timeout) is dropped alone; the server keeps serving.
   */
  async listen(opts: ListenOptions): Promise<Listener> {
    const host = opts.host ?? '127.0.0.1';
    const tls = this.tls;
    let server: HttpServer;
    if (tls) {
      const mutual = tls.requireClientCert ?? false;
      server = createHttpsServer(
        {
          cert: tls.cert,
          key: tls.key,
          ca: tls.ca,
          minVersion: 'TLSv1.2',
          maxHeaderSize: MAX_UPGRADE_HEADER_BYTES,
          requestCert: mutual,
          rejectUnauthorized: mutual,
          handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
        },
        upgradeRequired,
      );
      server.on('tlsClientError', (_err: Error, socket: Socket) => socket.destroy());
    } else server = createHttpServer({ maxHeaderSize: MAX_UPGRADE_HEADER_BYTES }, upgradeRequired);
    return this.serveOn(
      server,
      tls ? 'wss' : 'ws',
      host,
      opts.port ?? 0,
      { ...DEFAULT_LISTEN_LIMITS, ...opts.limits },
      opts.onLimit,
    );
  }

  /** Listen on `host:port` with the limits, and `ws` on top; close drops every socket, upgraded or not. */
  private async serveOn(
    http: HttpServer,
    scheme: 'ws' | 'wss',
    host: string,
    port: number,
    limits: ListenLimits,
    onLimit: ((l: Limited) => void) | undefined,
  ): Promise<Listener> {
    const untrusted = guard(http, limits, onLimit);
    try {
      await new Promise<void>((resolve, reject) => {
        http.once('error', reject);
        http.listen(port, host, () => {
          http.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      throw new Error(`cannot listen on ${host}:${port} (${scheme}): ${(err as Error).message}`, { cause: err });
    }
    // Errors after listening (a socket's, re-emitted by ws too) must not become uncaught exceptions.
    http.on('error', () => undefined);
    // ws itself refuses frames past twice our limit; below that our codec answers FRAME_TOO_LARGE.
    const server = new WebSocketServer({ server: http, maxPayload: this.maxFrameBytes * 2 });
    server.on('error', () => undefined);
    const addr = http.address();
    const bound = typeof addr === 'object' && addr ? addr.port : port;
    return this.serve(server, `${scheme}://${host}:${bound}`, limits, untrusted, async () => {
      // ws does not close a server it was handed; sockets never upgraded are dropped here too.
      await new Promise<void>((resolve) => server.close(() => resolve()));
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    });
  }

  /** Wrap each accepted WebSocket as a Connection; `close` drops them all, then closes the server. */
  private serve(
    server: WebSocketServer,
    url: string,
    limits: ListenLimits,
    untrusted: Untrusted,
    closeServer: () => Promise<void>,
  ): Listener {
    const conns = new Set<WsConnection>();
    let onConn: ((c: Connection) => void) | undefined;
    server.on('connection', (ws, req) => {
      // Until the peer authenticates, every byte it sends counts against preAuthBytes: past it the
      // socket is destroyed before ws buffers a large message.
      const socket = req.socket;
      let bytes = 0;
      const count = (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > limits.preAuthBytes) socket.destroy();
      };
      socket.on('data', count);
      const trusted = () => {
        socket.off('data', count);
        untrusted.get(peerKey(socket))?.();
      };
      const conn = new WsConnection(
        ws,
        `${socket.remoteAddress}:${socket.remotePort}`,
        this.maxFrameBytes,
        trusted,
        url.startsWith('wss:'),
      );
      conns.add(conn);
      conn.onClose(() => conns.delete(conn));
      if (onConn) onConn(conn);
      else conn.terminate();
    });
    return {
      url,
      onConnection: (cb) => {
        onConn = cb;
      },
      close: async () => {
        for (const c of conns) c.terminate();
        await closeServer();
      },
    };
  }

  /**
   * Connect to `ws://` or `wss://`. A `wss://` server must present a certificate that chains to the
   * configured CA and names the URL's host (an IP needs an IP subjectAltName); nothing turns that
   * check off. With TLS required (the default once TLS is configured) a `ws://` URL is refused.
   */
  connect(url: string, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const secure = isSecureUrl(url);
      if (!secure && this.tls && (this.tls.require ?? true)) {
        throw new Error(`refusing to connect to ${url}: TLS is required (tls.require) and this is not a wss:// URL`);
      }
      if (secure && !this.clientContext) {
        throw new Error(`cannot connect to ${url}: a wss:// URL needs the transport's tls option (the CA to trust)`);
      }
      const tlsOpts = secure ? { secureContext: this.clientContext, rejectUnauthorized: true } : {};
      const ws = new WebSocket(url, {
        maxPayload: this.maxFrameBytes * 2,
        handshakeTimeout: opts.timeoutMs ?? 2000,
        generateMask: zeroMask,
        ...tlsOpts,
      });
      const conn = new WsConnection(ws, url, this.maxFrameBytes, undefined, secure);
      const onFail = (err: Error) => reject(connectError(url, err));
      ws.once('error', onFail);
      ws.once('open', () => {
        ws.off('error', onFail);
        resolve(conn);
      });
    });
  }
}
