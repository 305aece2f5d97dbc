/**
 * Integrity of a session's frames on a link without TLS. After the handshake both ends hold a session
 * key (derived from the node's key and both nonces, actors/auth.ts); every frame then carries
 *
 *   HMAC-SHA256(key, direction | counter | frame), first 16 bytes
 *
 * after its bytes. The counter of each direction starts at 0 and counts frames, so a frame that is
 * forged, altered, replayed, reordered or dropped by something between the ends fails the check of
 * the next one, and the connection is dropped: a relay between a node and a real replica can pass
 * frames on, never make one up (an acknowledgement of a write that did not reach the replica, say).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const MAC_BYTES = 16;

export type FrameRole = 'client' | 'server';

export class FrameMac {
  private sent = 0;
  private received = 0;
  private readonly counter = Buffer.alloc(9);

  constructor(
    private readonly key: Uint8Array,
    private readonly role: FrameRole,
  ) {}

  private mac(direction: number, n: number, frame: Uint8Array): Buffer {
    const c = this.counter;
    c[0] = direction;
    c.writeUInt32BE(Math.floor(n / 0x1_0000_0000), 1);
    c.writeUInt32BE(n >>> 0, 5);
    return createHmac('sha256', this.key).update(c).update(frame).digest();
  }

  /** Write the MAC of `frame[0, frame.length - MAC_BYTES)` into its last MAC_BYTES bytes. */
  seal(frame: Buffer): void {
    const body = frame.subarray(0, frame.length - MAC_BYTES);
    this.mac(this.role === 'client' ? 0 : 1, this.sent++, body).copy(frame, body.length, 0, MAC_BYTES);
  }

  /** The frame without its MAC if the MAC is the next one expected from the peer; undefined otherwise. */
  open(frame: Uint8Array): Uint8Array | undefined {
    if (frame.length < MAC_BYTES) return undefined;
    const body = frame.subarray(0, frame.length - MAC_BYTES);
    const expected = this.mac(this.role === 'client' ? 1 : 0, this.received, body).subarray(0, MAC_BYTES);
    if (!timingSafeEqual(expected, frame.subarray(body.length))) return undefined;
    this.received++;
    return body;
  }
}
