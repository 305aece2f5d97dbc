/**
 * The in-memory network: same interface as the WebSocket transport, same codec on every frame (so
 * validation is identical), no sockets. Delivery goes through `deliver`, which a simulation replaces
 * with its own seeded scheduler; `cut` drops a link silently, as a partition would.
 */
import { decode, DEFAULT_MAX_FRAME_BYTES, encode, type Decoded } from './codec.js';
import type { Message } from './messages.js';
import type { CloseInfo, Connection, ListenOptions, Listener, Transport } from './types.js';

export interface MemoryNetworkOptions {
  /** Runs a delivery later. Defaults to `setImmediate`. */
  deliver?: (fn: () => void) => void;
  maxFrameBytes?: number;
}

class MemoryConnection implements Connection {
  peer!: MemoryConnection;
  private frameCb: ((f: Decoded) => void) | undefined;
  private readonly closeCbs: Array<(i: CloseInfo) => void> = [];
  private closed = false;
  /** When true, frames in both directions vanish (a silent partition). */
  cut = false;

  constructor(readonly remote: string, private readonly net: MemoryNetwork) {}

  get isOpen(): boolean {
    return !this.closed;
  }

  send(msg: Message): boolean {
    if (this.closed) return false;
    this.sendRaw(encode(msg));
    return true;
  }

  /** Send bytes as they are, for tests of the codec's error path. */
  sendRaw(frame: Uint8Array | string): void {
    if (this.closed || this.cut) return;
    const peer = this.peer;
    this.net.deliver(() => {
      if (!peer.closed && !this.cut) peer.frameCb?.(decode(frame, this.net.maxFrameBytes));
    });
  }

  close(code = 1000, reason = ''): void {
    if (this.closed) return;
    this.finish({ code, reason });
    const peer = this.peer;
    this.net.deliver(() => peer.finish({ code, reason }));
  }

  terminate(): void {
    this.close(1006, 'terminated');
  }

  onFrame(cb: (f: Decoded) => void): void {
    this.frameCb = cb;
  }

  onClose(cb: (i: CloseInfo) => void): void {
    this.closeCbs.push(cb);
  }

  finish(info: CloseInfo): void {
    if (this.closed) return;
    this.closed = true;
    for (const cb of this.closeCbs) cb(info);
  }
}

export class MemoryNetwork implements Transport {
  readonly deliver: (fn: () => void) => void;
  readonly maxFrameBytes: number;
  private readonly listeners = new Map<string, { onConn?: (c: Connection) => void; conns: Set<MemoryConnection> }>();
  private nextPort = 1;

  constructor(opts: MemoryNetworkOptions = {}) {
    this.deliver = opts.deliver ?? ((fn) => setImmediate(fn));
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  }

  async listen(opts: ListenOptions): Promise<Listener> {
    const name = opts.name ?? `listener-${this.nextPort++}`;
    const url = `mem://${name}`;
    if (this.listeners.has(url)) throw new Error(`${url} is already listening`);
    const entry: { onConn?: (c: Connection) => void; conns: Set<MemoryConnection> } = { conns: new Set() };
    this.listeners.set(url, entry);
    return {
      url,
      onConnection: (cb) => {
        entry.onConn = cb;
      },
      close: async () => {
        this.listeners.delete(url);
        for (const c of entry.conns) c.terminate();
      },
    };
  }

  async connect(url: string): Promise<Connection> {
    const entry = this.listeners.get(url);
    if (!entry?.onConn) throw new Error(`cannot connect to ${url}: nothing listens there`);
    const client = new MemoryConnection(url, this);
    const server = new MemoryConnection(`client-of-${url}`, this);
    client.peer = server;
    server.peer = client;
    entry.conns.add(server);
    server.onClose(() => entry.conns.delete(server));
    entry.onConn(server);
    return client;
  }
}
