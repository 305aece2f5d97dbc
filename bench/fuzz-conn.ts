/** The fuzzer's raw client connection to a replica: frames sent as they are, answers counted. */
import { WebSocket, type RawData } from 'ws';
import { decode, encode, type Decoded } from '../transport/codec.js';
import { FrameMac, MAC_BYTES } from '../transport/frame-mac.js';
import { type Message } from '../transport/messages.js';
import { Frame, MiB } from './fuzz-frames.js';

// ---------------------------------------------------------------- a raw client connection

const toBuffer = (data: RawData): Buffer =>
  Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);

export type BrokenSeal = 'flipped-mac' | 'replayed' | 'unsealed' | 'text';

/** A bare `ws` client: frames out as given (sealed, once protected), replies decoded by the project's codec. */
export class RawConn {
  closed = false;
  closeCode = 0;
  /** We closed or dropped it (so a close code is not the replica's word). */
  byUs = false;
  onMessage: (d: Decoded) => void = () => undefined;
  private readonly waiters = new Set<() => void>();
  /** Sealed frames (transport/frame-mac.ts), once `protect` was called; the last one sent, to replay. */
  private mac: FrameMac | undefined;
  private sealedSeen = false;
  private lastSealed: Buffer | undefined;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      this.onMessage(this.open(toBuffer(data), isBinary));
      this.kick();
    });
    ws.on('close', (code) => {
      this.closed = true;
      this.closeCode = code;
      this.kick();
    });
    ws.on('error', () => undefined);
  }

  /** Connect; a refusal (HTTP status, reset, timeout) comes back as its reason. */
  static connect(url: string, timeoutMs: number): Promise<RawConn | string> {
    return new Promise((resolve) => {
      const ws = new WebSocket(url, { handshakeTimeout: timeoutMs, perMessageDeflate: false, maxPayload: 64 * MiB });
      const conn = new RawConn(ws);
      ws.once('open', () => resolve(conn));
      ws.once('unexpected-response', (req, res) => {
        req.destroy();
        resolve(`HTTP ${res.statusCode ?? '?'}`);
      });
      ws.once('error', (err) => resolve(err.message));
      ws.once('close', (code) => resolve(`closed ${code} before open`));
    });
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** From now on every frame sent is sealed under `key` and every reply must open under it. */
  protect(key: Uint8Array): void {
    this.mac = new FrameMac(key, 'client');
  }

  private open(bytes: Buffer, isBinary: boolean): Decoded {
    const body = this.mac && isBinary ? this.mac.open(bytes) : undefined;
    if (body) this.sealedSeen = true;
    const d = decode(body ?? (isBinary ? bytes : bytes.toString('utf8')), 64 * MiB);
    // On a sealed session every reply is sealed, but for the replica's refusal of the handshake.
    if (!this.mac || body || (!this.sealedSeen && d.ok && d.msg.type === 'error')) return d;
    return { ok: false, code: 'BAD_FRAME', message: 'a reply on a sealed session failed its MAC' };
  }

  send(f: { bytes: Buffer; binary: boolean }): boolean {
    if (!this.isOpen) return false;
    if (!this.mac) {
      this.ws.send(f.bytes, { binary: f.binary });
      return true;
    }
    const frame = Buffer.allocUnsafe(f.bytes.length + MAC_BYTES);
    f.bytes.copy(frame);
    this.mac.seal(frame);
    this.lastSealed = frame;
    this.ws.send(frame, { binary: true });
    return true;
  }

  /** On a sealed session: a frame whose seal is broken, as a relay or a forger would send it. */
  sendBroken(f: Frame, how: BrokenSeal): boolean {
    if (!this.isOpen) return false;
    if (how === 'replayed' && this.lastSealed) this.ws.send(this.lastSealed, { binary: true });
    else if (how === 'unsealed') this.ws.send(f.bytes, { binary: true });
    else if (how === 'text') this.ws.send(f.bytes, { binary: false });
    else {
      const frame = Buffer.concat([f.bytes, Buffer.alloc(MAC_BYTES)]);
      this.mac?.seal(frame);
      frame[frame.length - 1] = (frame[frame.length - 1] ?? 0) ^ 0x01;
      this.ws.send(frame, { binary: true });
    }
    return true;
  }

  sendMessage(m: Message): boolean {
    return this.send({ bytes: encode(m), binary: true });
  }

  /** Resolves true once `pred` holds, false at the timeout or when the connection closed without it. */
  until(pred: () => boolean, timeoutMs: number): Promise<boolean> {
    if (pred()) return Promise.resolve(true);
    if (this.closed) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (v: boolean) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(v);
      };
      const check = () => {
        if (pred()) done(true);
        else if (this.closed) done(false);
      };
      const timer = setTimeout(() => done(pred()), timeoutMs);
      this.waiters.add(check);
    });
  }

  close(code = 1000): void {
    this.byUs = true;
    this.ws.close(code);
  }

  terminate(): void {
    this.byUs = true;
    this.ws.terminate();
  }

  private kick(): void {
    for (const w of [...this.waiters]) w();
  }
}
