/**
 * One NBD connection's place among its principal's connections to the export (Admission): taken as
 * soon as it is known who the connection acts as, given back when it closes or proves another principal.
 */
import { REFUSED_GRACE_MS, type Admission } from './nbd-limits.js';
import type { Auth } from './nbd-options.js';
import { ProtocolError } from './nbd-wire.js';

export class Place {
  /** Whether the connection holds its place, or why it was refused one. */
  private admitted = false;
  private refusal: string | undefined;
  private refusalTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly admission: Admission,
    private readonly auth: Auth,
    /** Close the connection, refused. */
    private readonly fail: (err: unknown) => void,
  ) {}

  /**
   * Take a place for this connection among its principal's as soon as it is known who it acts as (at
   * connect on a Unix socket, when its TLS handshake proves a principal), so a connection that proved
   * a principal and never asks for an export still counts. A refused one is told why at its next option
   * (NBD_REP_ERR_POLICY) and closed soon after; a warning is logged.
   */
  claim(principal: string): void {
    clearTimeout(this.refusalTimer);
    this.refusal = undefined;
    if (this.admission.take(principal)) {
      this.admitted = true;
      return;
    }
    const why = `principal ${JSON.stringify(principal)} holds ${this.admission.max} connections to this export already (the most it may): close one and connect again`;
    this.auth.warn(
      'principal connection limit',
      { principal, max: this.admission.max },
      'nbd connection refused: too many connections of one principal',
    );
    this.refusal = why;
    this.refusalTimer = setTimeout(() => this.fail(new ProtocolError(why)), REFUSED_GRACE_MS);
    this.refusalTimer.unref();
  }

  /** Why this connection may not open an export (it holds no place among its principal's), if so. */
  refused(): string | undefined {
    return this.admitted ? undefined : this.refusal;
  }

  /** Give back this connection's place among `principal`'s (the one it was claimed for). */
  give(principal: string): void {
    if (!this.admitted) return;
    this.admitted = false;
    this.admission.give(principal);
  }

  /** The connection closed: a refused one is not closed again. */
  stop(): void {
    clearTimeout(this.refusalTimer);
  }
}
