/**
 * An NBD export: unmodified programs (qemu-io, qemu-img, QEMU, nbd clients) use a safe-resume target
 * as a block device. Built only on `Application` and `Handle`: a request waits while its handle is
 * paused, completes after a granted resume, and fails with EIO once the handle is invalidated (or at
 * once, with `onFailure: 'error'`, while storage is away).
 *
 * Protocol: the fixed newstyle handshake of the NBD protocol (doc/proto.md of the NetworkBlockDevice
 * project): options STARTTLS, GO, INFO, LIST, ABORT, EXPORT_NAME, STRUCTURED_REPLY, LIST_META_CONTEXT
 * and SET_META_CONTEXT (one context: `base:allocation`); commands READ, WRITE, FLUSH, DISC, TRIM,
 * WRITE_ZEROES and BLOCK_STATUS. Replies are simple unless the client negotiated structured replies;
 * then each request gets one chunk marked DONE (READ: OFFSET_DATA, BLOCK_STATUS: its extents, other
 * successes: NONE, failures: ERROR with the reason). BLOCK_STATUS answers `base:allocation` from the
 * pages the store keeps (handle.extents, never by reading data): a kept page is data (0), the rest
 * HOLE|ZERO (the store keeps no page that is all zeros, so that is exact); an answer may cover a prefix
 * of the range. Without the context selected for this export, of no bytes, or past the end it is
 * refused EINVAL. The export name is the target. Malformed input gets an NBD error reply or a closed
 * connection, never a crash.
 *
 * Transmission flags: FLUSH, FUA, TRIM, WRITE_ZEROES, CAN_MULTI_CONN. FUA is honoured on every request by what the
 * export already does: a write-type request (WRITE, WRITE_ZEROES, TRIM) is answered only after the
 * store committed it (the store's commit is durable), so nothing is left to persist when the flag is
 * set, and the flag is accepted on any command. FLUSH waits for the writes still on their way.
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
 *
 * Several connections (QEMU, nbdcopy): the connections of one principal to one target share one
 * handle (nbd-shared.ts): one read handle, one write handle taken at the first write-type request on
 * any of them (kept only if nobody wrote the target since the shared read handle opened it), an
 * invalidation failing the requests of all, and the handle closed once the last has gone. Connections
 * of different principals never share: the second to write finds the target LOCKED, as a lone
 * connection of another node would. NBD_FLAG_CAN_MULTI_CONN holds because the export keeps no cache:
 * every write is answered only after the store committed it, so a write completed on any connection is
 * already durable and read back on every other through the same handle; a FLUSH on any connection
 * also waits for the writes then in flight on every connection sharing its handle (more than the
 * protocol asks: it covers writes completed before the flush arrived).
 */
import { createServer, type AddressInfo, type Server } from 'node:net';
import { Application } from '../actors/application.js';
import { NAME_PATTERN } from '../actors/auth.js';
import { SafeResumeError } from '../errors.js';
import { sourceOf, Unauthenticated } from '../transport/pre-auth.js';
import { realClock } from '../actors/env.js';
import { LogLimiter } from '../actors/log-limit.js';
import { Connection } from './nbd-connection.js';
import { SharedHandles } from './nbd-shared.js';
import { Admission, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PRINCIPAL, MAX_UNAUTHENTICATED } from './nbd-limits.js';
import type { Auth, NbdConnectionView, NbdExportOptions } from './nbd-options.js';

export { CMD, IHAVEOPT, NBDMAGIC, OPT, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC } from './nbd-wire.js';
export type { NbdConnectionView, NbdExportOptions } from './nbd-options.js';

export class NbdExport {
  private server: Server | undefined;
  private readonly conns = new Set<Connection>();
  private readonly admission: Admission;
  /** The handles the connections of one principal to one target share. */
  private readonly handles: SharedHandles;
  private readonly apps = new Map<string, Application>();
  /** Warnings clients can cause (a broken handshake, an unknown principal, a refused place), rate-limited. */
  private readonly warnings = new LogLimiter(realClock);
  url = '';

  constructor(private readonly opts: NbdExportOptions) {
    this.admission = new Admission(opts.maxConnectionsPerPrincipal ?? MAX_CONNECTIONS_PER_PRINCIPAL);
    this.handles = new SharedHandles(opts);
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
    if (this.opts.path === undefined && this.opts.port === undefined)
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        'an NBD export needs a Unix socket path, or a TCP port (where clients must use TLS-PSK)',
      );
    const auth: Auth = {
      tlsOnly: this.opts.path === undefined,
      local: this.opts.path !== undefined ? this.opts.app : undefined,
      keyFor: (identity) => this.keyFor(identity),
      appFor: (principal) => this.appFor(principal),
      warn: (kind, fields, message) => {
        const t = this.warnings.take(kind);
        if (t.log)
          this.opts.log?.warn(
            t.suppressed > 0 ? { ...fields, suppressed: t.suppressed } : fields,
            t.suppressed > 0 ? `${message} (and ${t.suppressed} more like it left out)` : message,
          );
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
        const { remove, limited } = pre.admit(
          sourceOf(socket.remoteAddress),
          () => socket.bytesRead === 0,
          () => socket.destroy(),
        );
        trusted = remove;
        if (limited)
          auth.warn(
            'pre-auth limit',
            { ...limited },
            'nbd: a source holds too many connections that have not proved a principal; its oldest are dropped',
          );
      }
      const c = new Connection(
        socket,
        this.opts,
        auth,
        this.admission,
        () => {
          trusted();
          this.conns.delete(c);
        },
        trusted,
        this.handles,
      );
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
  return base.startsWith('nbd+unix:///?')
    ? `nbd+unix:///${name}${base.slice('nbd+unix:///'.length)}`
    : `${base}${name}`;
}
