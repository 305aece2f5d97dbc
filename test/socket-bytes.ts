/** The bytes a test's raw protocol client receives on a socket, taken in order as its parser needs them. */
import type { Socket } from 'node:net';

export class SocketBytes {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  /** The server closed the connection (or it failed). */
  closed = false;

  constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('close', () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('error', () => undefined);
  }

  /** The next `n` bytes, once they arrived; throws if the connection closes first. */
  async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}
