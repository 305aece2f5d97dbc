/**
 * The in-memory network: same interface as the WebSocket transport, same codec on every frame (so
 * validation is identical), no sockets. Delivery goes through `deliver`, which a simulation replaces
 * with its own seeded scheduler; `cut` drops a link silently, as a partition would.
 */
import { decode, DEFAULT_MAX_FRAME_BYTES, encode, type Decoded } from './codec.js';
import type { Message } from './messages.js';
import type { CloseInfo, Connection, ListenOptions, Listener, Transport } from './types.js';

/** What a delivery carries: a frame or a close, from one end of a link to the other. */
export interface Delivery {
  from: string;
  to: string;
  kind: 'frame' | 'close';
  /** The message type of a frame, when it was sent as a message. */
  type?: string;
}

export interface MemoryNetworkOptions {
  /**
   * Runs a delivery later. Defaults to `setImmediate`. A simulation passes its own, which may delay,
   * drop or duplicate it (call `fn` zero, one or more times).
   */
  deliver?: (fn: () => void, d: Delivery) => void;
  maxFrameBytes?: number;
}

class MemoryConnection implements Connection {
  peer!: MemoryConnection;
  private frameCb: ((f: Decoded) => void) | undefined;
  private readonly closeCbs: Array<(i: CloseInfo) => void> = [];
  private closed = false;
  /** When true, frames in both directions vanish (a silent partition). */
  cut = false;
  /** The process at this end died without a word: it sends, closes and hears nothing. */
  dead = false;

  constructor(
    readonly remote: string,
    private readonly net: MemoryNetwork,
    readonly local: string,
  ) {}

  get isOpen(): boolean {
    return !this.closed;
  }

  send(msg: Message): boolean {
    if (this.closed) return false;
    this.sendRaw(encode(msg), msg.type);
    return true;
  }

  /** Send bytes as they are, for tests of the codec's error path. */
  sendRaw(frame: Uint8Array | string, type?: string): void {
    if (this.closed || this.cut || this.dead) return;
    const peer = this.peer;
    this.net.deliver(
      () => {
        if (!peer.closed && !peer.dead && !this.cut) peer.frameCb?.(decode(frame, this.net.maxFrameBytes));
      },
      type === undefined
        ? { from: this.local, to: this.remote, kind: 'frame' }
        : { from: this.local, to: this.remote, kind: 'frame', type },
    );
  }

  close(code = 1000, reason = ''): void {
    if (this.closed || this.dead) return;
    this.finish({ code, reason });
    const peer = this.peer;
    this.net.deliver(() => peer.finish({ code, reason }), { from: this.local, to: this.remote, kind: 'close' });
  }

  terminate(): void {
    this.close(1006, 'terminated');
  }

  onFrame(cb: (f: Decoded) => void): void {
    this.frameCb = cb;
  }

  // The in-memory network buffers nothing and has no sockets: nothing to limit or to wait for.
  trust(): void {}
  protect(): void {}
  readonly bufferedBytes = 0;
  pauseReading(): void {}
  resumeReading(): void {}
  onDrain(): void {}

  onClose(cb: (i: CloseInfo) => void): void {
    this.closeCbs.push(cb);
  }

  finish(info: CloseInfo): void {
    if (this.closed || this.dead) return;
    this.closed = true;
    for (const cb of this.closeCbs) cb(info);
  }
}

export class MemoryNetwork implements Transport {
  readonly deliver: (fn: () => void, d: Delivery) => void;
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

  /**
   * The process listening at `url` dies at once (a killed host): new connections are refused, and
   * its open connections go silent without closing, so their peers learn only from silence.
   */
  kill(url: string): void {
    const entry = this.listeners.get(url);
    if (!entry) return;
    this.listeners.delete(url);
    for (const c of entry.conns) c.dead = true;
    entry.conns.clear();
  }

  /** A view of the network whose connections come from `name` (so a simulation can tell links apart). */
  as(name: string): Transport {
    return {
      listen: (opts) => this.listen(opts),
      connect: (url) => this.connectFrom(url, name),
    };
  }

  connect(url: string): Promise<Connection> {
    return this.connectFrom(url, 'client');
  }

  private async connectFrom(url: string, from: string): Promise<Connection> {
    const entry = this.listeners.get(url);
    if (!entry?.onConn) throw new Error(`cannot connect to ${url}: nothing listens there`);
    const name = url.slice('mem://'.length);
    const client = new MemoryConnection(name, this, from);
    const server = new MemoryConnection(from, this, name);
    client.peer = server;
    server.peer = client;
    entry.conns.add(server);
    server.onClose(() => entry.conns.delete(server));
    entry.onConn(server);
    return client;
  }
}
