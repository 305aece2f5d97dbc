/** The WebSocket transport, on `ws`. */
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { decode, DEFAULT_MAX_FRAME_BYTES, encode, type Decoded } from './codec.js';
import type { Message } from './messages.js';
import type { CloseInfo, Connection, ListenOptions, Listener, Transport } from './types.js';

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

  constructor(private readonly ws: WebSocket, readonly remote: string, maxFrameBytes: number) {
    ws.on('message', (data, isBinary) => {
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
    this.ws.send(encode(msg), { binary: true });
    return true;
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

  private finish(info: CloseInfo): void {
    if (this.closed) return;
    this.closed = true;
    for (const cb of this.closeCbs) cb(info);
  }
}

export class WebSocketTransport implements Transport {
  constructor(private readonly maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {}

  async listen(opts: ListenOptions): Promise<Listener> {
    // ws itself refuses frames past twice our limit; below that our codec answers FRAME_TOO_LARGE.
    const server = new WebSocketServer({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 0, maxPayload: this.maxFrameBytes * 2 });
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    server.on('error', () => undefined);
    const addr = server.address();
    const port = typeof addr === 'object' && addr ? addr.port : opts.port;
    const conns = new Set<WsConnection>();
    let onConn: ((c: Connection) => void) | undefined;
    server.on('connection', (ws, req) => {
      const conn = new WsConnection(ws, `${req.socket.remoteAddress}:${req.socket.remotePort}`, this.maxFrameBytes);
      conns.add(conn);
      conn.onClose(() => conns.delete(conn));
      if (onConn) onConn(conn);
      else conn.terminate();
    });
    return {
      url: `ws://${opts.host ?? '127.0.0.1'}:${port}`,
      onConnection: (cb) => {
        onConn = cb;
      },
      close: async () => {
        for (const c of conns) c.terminate();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      },
    };
  }

  connect(url: string, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { maxPayload: this.maxFrameBytes * 2, handshakeTimeout: opts.timeoutMs ?? 2000, generateMask: zeroMask });
      const conn = new WsConnection(ws, url, this.maxFrameBytes);
      const onFail = (err: Error) => reject(new Error(`cannot connect to ${url}: ${err.message}`));
      ws.once('error', onFail);
      ws.once('open', () => {
        ws.off('error', onFail);
        resolve(conn);
      });
    });
  }
}
