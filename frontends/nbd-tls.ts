/**
 * NBD_OPT_STARTTLS's TLS: the server side of TLS-PSK over the connection's socket, where the client's
 * PSK identity names the principal it proves (the key is that principal's, actors/auth.ts nbdPsk).
 */
import type { Socket } from 'node:net';
import { createSecureContext, TLSSocket, type SecureContext, type TLSSocketOptions } from 'node:tls';
import type { Auth } from './nbd-options.js';
import { ProtocolError } from './nbd-wire.js';

/**
 * TLS with pre-shared keys only (no certificates): TLS 1.3 (its PSK handshake with (EC)DHE, as GnuTLS
 * in QEMU and libnbd makes it); the TLS 1.2 PSK suites listed are what turns OpenSSL's PSK path on.
 */
const PSK_CIPHERS = 'PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';
let pskContext: SecureContext | undefined;

/**
 * The TLS socket over `raw` (the server's side), and the principal its client proved with its
 * pre-shared key ('' until its handshake has, or if it named one `auth` cannot verify).
 */
export function tlsServerSocket(
  raw: Socket,
  auth: Pick<Auth, 'keyFor' | 'warn'>,
): { tls: TLSSocket; proved: () => string } {
  let proved = '';
  pskContext ??= createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.3' });
  // Node takes `pskCallback` for a server-side TLSSocket too (@types/node 20 declares it for tls.createServer only).
  const options: TLSSocketOptions & { pskCallback: (socket: TLSSocket, identity: string) => Buffer | null } = {
    isServer: true,
    secureContext: pskContext,
    pskCallback: (_socket, identity) => {
      const key = auth.keyFor(identity);
      if (key) proved = identity;
      else
        auth.warn(
          'unknown principal',
          { principal: identity.slice(0, 128) },
          'nbd client refused: it names a principal this export cannot verify (no credential for it on this node)',
        );
      return key ?? null;
    },
  };
  return { tls: new TLSSocket(raw, options), proved: () => proved };
}

/** Resolves once the TLS handshake is done; rejects if it fails or the client goes away first. */
export function tlsHandshake(tls: TLSSocket): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    tls.once('secure', resolve);
    tls.once('error', reject);
    tls.once('close', () => reject(new ProtocolError('the client went away during the TLS handshake')));
  });
}
