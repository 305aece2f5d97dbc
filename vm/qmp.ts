/**
 * A QMP client (the QEMU Machine Protocol, QEMU's docs/interop/qmp-spec.rst) over a Unix socket: the
 * server's greeting, `qmp_capabilities` to leave negotiation mode, then commands, each sent with an `id`
 * and answered by the line carrying that `id` (`return` or `error`), and asynchronous events (`STOP`,
 * `RESUME`, `SHUTDOWN`, `BLOCK_IO_ERROR`, ...) told to `onEvent` listeners. Every line is one JSON object
 * ending in CRLF.
 *
 * Bad input never crashes the caller: a socket that cannot be reached or closes, a line that is not a
 * JSON object (or grows past MAX_LINE_BYTES), a greeting that is not QMP's, an error answer, or a
 * command that gets no answer in time each reject with a `QmpError` naming its kind. A malformed line
 * ends the connection (nothing after it can be trusted); every command still waiting is rejected.
 */
import { connect, type Socket } from 'node:net';

/** What went wrong talking QMP. */
export type QmpErrorKind = 'connect' | 'closed' | 'malformed' | 'greeting' | 'command' | 'timeout';

export class QmpError extends Error {
  constructor(
    readonly kind: QmpErrorKind,
    message: string,
    /** For `command`: QEMU's error class (`GenericError`, `CommandNotFound`, ...). */
    readonly errorClass?: string,
  ) {
    super(message);
    this.name = 'QmpError';
  }
}

/** An asynchronous event as QEMU sent it. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** The server's time of the event, in ms since the epoch (-1 if it could not tell). */
  at: number;
}

/** `query-status`'s answer: whether the guest's CPUs run, and QEMU's run state (`running`, `paused`, `prelaunch`, ...). */
export interface QmpStatus {
  running: boolean;
  status: string;
}

/** The longest line accepted from the server. */
export const MAX_LINE_BYTES = 1024 * 1024;
/** How long a command (or the greeting) may wait for its answer by default. */
export const DEFAULT_QMP_TIMEOUT_MS = 10_000;

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: QmpError) => void;
  timer: NodeJS.Timeout | undefined;
}

/** A connected socket to `path`, or a QmpError of kind `connect`. */
function reach(path: string): Promise<Socket> {
  const socket = connect(path);
  return new Promise<Socket>((resolve, reject) => {
    const failed = (err: Error) => reject(new QmpError('connect', `cannot reach QMP at ${path}: ${err.message}`));
    socket.once('error', failed);
    socket.once('connect', () => {
      socket.off('error', failed);
      resolve(socket);
    });
  });
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export class QmpClient {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly eventListeners = new Set<(ev: QmpEvent) => void>();
  private readonly closeListeners = new Set<(err: QmpError) => void>();
  private greeted: ((greeting: Record<string, unknown> | QmpError) => void) | undefined;
  /** Why the connection ended, once it has. */
  closed: QmpError | undefined;
  /** The server's version, from its greeting. */
  version: unknown;

  private constructor(
    private readonly socket: Socket,
    private readonly timeoutMs: number,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.received(chunk));
    socket.on('error', (err) => this.end(new QmpError('closed', `QMP socket failed: ${err.message}`)));
    socket.on('close', () => this.end(new QmpError('closed', 'QMP socket closed')));
  }

  /**
   * Connect to the QMP socket at `path`, read the greeting and leave negotiation mode. `retryMs`: keep
   * trying for that long while nobody listens there yet (a QEMU just started creates the socket's file
   * before it listens on it).
   */
  static async connect(path: string, opts: { timeoutMs?: number; retryMs?: number } = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
    const until = Date.now() + (opts.retryMs ?? 0);
    let socket: Socket;
    for (;;) {
      try {
        socket = await reach(path);
        break;
      } catch (err) {
        if (Date.now() >= until) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const client = new QmpClient(socket, timeoutMs);
    const greeting = await new Promise<Record<string, unknown> | QmpError>((resolve) => {
      const timer = setTimeout(() => resolve(new QmpError('timeout', `no QMP greeting in ${timeoutMs} ms`)), timeoutMs);
      client.greeted = (g) => {
        clearTimeout(timer);
        resolve(g);
      };
      if (client.closed) client.greeted(client.closed);
    });
    client.greeted = undefined;
    if (greeting instanceof QmpError) {
      client.close();
      throw greeting;
    }
    client.version = isObject(greeting.QMP) ? greeting.QMP.version : undefined;
    await client.execute('qmp_capabilities').catch((err: unknown) => {
      client.close();
      throw err;
    });
    return client;
  }

  /**
   * Run `command` with `args`; resolves with its `return`, rejects with a QmpError. `timeoutMs` 0 waits
   * as long as QEMU takes (its `stop` answers only once the disks' requests in flight are done).
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = this.timeoutMs): Promise<T> {
    if (this.closed) return Promise.reject(new QmpError('closed', `${command}: ${this.closed.message}`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              this.pending.delete(id);
              reject(new QmpError('timeout', `${command}: no answer in ${timeoutMs} ms`));
            }, timeoutMs)
          : undefined;
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\r\n');
    });
  }

  /** The guest's run state (`query-status`). */
  async status(): Promise<QmpStatus> {
    const r = await this.execute('query-status');
    if (!isObject(r) || typeof r.running !== 'boolean' || typeof r.status !== 'string')
      throw new QmpError('malformed', `query-status answered ${JSON.stringify(r)}`);
    return { running: r.running, status: r.status };
  }

  onEvent(fn: (ev: QmpEvent) => void): () => void {
    this.eventListeners.add(fn);
    return () => this.eventListeners.delete(fn);
  }

  /** Told once, when the connection ends (QEMU quit, the socket failed, a malformed line). */
  onClose(fn: (err: QmpError) => void): () => void {
    this.closeListeners.add(fn);
    return () => this.closeListeners.delete(fn);
  }

  close(): void {
    this.end(new QmpError('closed', 'QMP connection closed by this side'));
  }

  private received(chunk: string): void {
    this.buf += chunk;
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl < 0) break;
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line.length > 0) this.line(line);
      if (this.closed) return;
    }
    if (this.buf.length > MAX_LINE_BYTES)
      this.end(new QmpError('malformed', `a QMP line longer than ${MAX_LINE_BYTES} bytes`));
  }

  private line(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      msg = undefined;
    }
    if (!isObject(msg)) {
      this.end(new QmpError('malformed', `not a QMP message: ${line.slice(0, 200)}`));
      return;
    }
    if (this.greeted) {
      if (isObject(msg.QMP)) this.greeted(msg);
      else this.end(new QmpError('greeting', `not a QMP greeting: ${line.slice(0, 200)}`));
      return;
    }
    if (typeof msg.event === 'string') {
      const ts = isObject(msg.timestamp) ? msg.timestamp : {};
      const s = typeof ts.seconds === 'number' ? ts.seconds : -1;
      const us = typeof ts.microseconds === 'number' ? ts.microseconds : 0;
      const ev: QmpEvent = {
        event: msg.event,
        data: isObject(msg.data) ? msg.data : {},
        at: s < 0 ? -1 : s * 1000 + us / 1000,
      };
      for (const fn of [...this.eventListeners]) fn(ev);
      return;
    }
    // An answer without an id (a parse error on QEMU's side) or with one this side never sent is dropped.
    const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
    if (!p) return;
    this.pending.delete(msg.id as number);
    clearTimeout(p.timer);
    if ('return' in msg) p.resolve(msg.return);
    else if (isObject(msg.error)) {
      const cls = typeof msg.error.class === 'string' ? msg.error.class : 'GenericError';
      const desc = typeof msg.error.desc === 'string' ? msg.error.desc : JSON.stringify(msg.error);
      p.reject(new QmpError('command', `${p.command}: ${cls}: ${desc}`, cls));
    } else p.reject(new QmpError('malformed', `${p.command}: an answer with neither return nor error`));
  }

  private end(err: QmpError): void {
    if (this.closed) return;
    this.closed = err;
    this.greeted?.(err);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpError(err.kind, `${p.command}: ${err.message}`));
    }
    this.pending.clear();
    this.socket.destroy();
    for (const fn of [...this.closeListeners]) fn(err);
  }
}
