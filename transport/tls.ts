/**
 * TLS for WebSocket links that leave the host: the options an operator gives, reading them from PEM
 * files, and turning a failed TLS connect into an error that says what went wrong.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext } from 'node:tls';

/** A PEM text, as a string or as the bytes of a PEM file. */
export type Pem = string | Buffer;

export interface TlsOptions {
  /** This process's certificate (PEM; may be followed by intermediates). Served by `listen`, shown to servers that ask. */
  cert: Pem;
  /** The private key of `cert` (PEM, unencrypted). */
  key: Pem;
  /** The CA (or CAs) that peers' certificates must chain to. Only these are trusted, never the system's store. */
  ca: Pem | Pem[];
  /** Refuse `ws://` URLs in `connect` instead of talking plaintext. Default true. */
  require?: boolean;
  /** Mutual TLS: `listen` asks every client for a certificate and refuses one not signed by `ca`. Default false. */
  requireClientCert?: boolean;
}

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
}

/** Read one PEM file, naming it (and what it was for) when it is missing, unreadable or not PEM. */
function readPem(what: string, file: string): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EACCES'
          ? 'permission denied'
          : code === 'EISDIR'
            ? 'is a directory'
            : code;
    throw new Error(`cannot read TLS ${what} file ${file}: ${why}`, { cause: err });
  }
  if (!pem.includes('-----BEGIN ')) throw new Error(`TLS ${what} file ${file} is not PEM (no "-----BEGIN" line)`);
  return pem;
}

/** Read the certificate, key and CA from PEM files; pass the result (plus `require`, if wanted) as `tls`. */
export function loadTlsFiles(files: TlsFiles): { cert: Buffer; key: Buffer; ca: Buffer } {
  return {
    cert: readPem('certificate', files.certFile),
    key: readPem('key', files.keyFile),
    ca: readPem('CA', files.caFile),
  };
}

/** The client side's context, built once; a bad PEM or a key that does not match the cert fails here. */
export function secureContextOf(tls: TlsOptions): SecureContext {
  try {
    return createSecureContext({ cert: tls.cert, key: tls.key, ca: tls.ca, minVersion: 'TLSv1.2' });
  } catch (err) {
    throw new Error(`invalid TLS configuration: ${(err as Error).message}`, { cause: err });
  }
}

/** Whether a URL is a TLS one (`wss:`, or `https:` which `ws` treats alike). */
export function isSecureUrl(url: string): boolean {
  let protocol: string;
  try {
    protocol = new URL(url).protocol;
  } catch {
    throw new Error(`invalid URL ${JSON.stringify(url)}`);
  }
  return protocol === 'wss:' || protocol === 'https:';
}

/** Certificate-chain failures: the peer's certificate does not lead to the configured CA. */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
]);

/** What a failed connect's error code means, in words; undefined when the message says enough. */
function hint(code: string | undefined, secure: boolean): string | undefined {
  if (!code) return undefined;
  if (UNTRUSTED.has(code)) return "the server's certificate is not signed by the configured CA";
  if (code === 'CERT_HAS_EXPIRED') return "the server's certificate has expired";
  if (code === 'CERT_NOT_YET_VALID') return "the server's certificate is not valid yet (check the clocks)";
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    return "the server's certificate does not name this host (its subjectAltName must list the host or IP of the URL)";
  if (code === 'INVALID_PURPOSE')
    return "the server's certificate is not for TLS servers (extendedKeyUsage lacks serverAuth)";
  // OpenSSL read an HTTP response (or other non-TLS bytes) where a TLS record should be.
  if (
    secure &&
    (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG' || code === 'EPROTO')
  ) {
    return 'the server does not speak TLS (is it a plain ws:// listener?)';
  }
  // The server sent a TLS alert about our certificate (mutual TLS).
  if (
    /^ERR_SSL_(TLSV1|TLSV13|SSLV3)_ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_REQUIRED|CERTIFICATE_UNKNOWN|CERTIFICATE_EXPIRED|DECRYPT_ERROR)$/.test(
      code,
    )
  ) {
    return "the server refused this client's certificate";
  }
  // A TLS server drops a plaintext client without a word, and (in Node) a client certificate it does not trust too.
  if (code === 'ECONNRESET' || code === 'EPIPE') {
    return secure
      ? "the server closed the connection during the handshake (a server requiring client certificates does so when it does not trust this one's)"
      : 'the server closed the connection during the handshake (if it is a wss:// listener, use a wss:// URL)';
  }
  return undefined;
}

/** OpenSSL's messages carry an error-queue prefix and a source path; keep the reason ("wrong version number"). */
function cleanMessage(message: string): string {
  const m = /:SSL routines:[^:]*:([^:]+):/.exec(message);
  return m?.[1] ?? message.trim();
}

/** The error `connect` rejects with: the URL, what went wrong in words when known, the cause and its code. */
export function connectError(url: string, err: Error): Error {
  // `ws` reports an HTTP answer other than 101 Switching Protocols without a code: a web server, a proxy, a wrong port.
  const http = /^Unexpected server response: (\d+)/.exec(err.message);
  if (http) {
    const out = new Error(
      `cannot connect to ${url}: the server answered HTTP ${http[1]}, not a WebSocket upgrade (is this a replica's address?) (NOT_WEBSOCKET)`,
      { cause: err },
    );
    (out as NodeJS.ErrnoException).code = 'NOT_WEBSOCKET';
    return out;
  }
  const code = (err as NodeJS.ErrnoException).code;
  const words = hint(code, isSecureUrlSafe(url));
  const message = cleanMessage(err.message);
  const detail = code && !message.includes(code) ? `${message} (${code})` : message;
  const out = new Error(`cannot connect to ${url}: ${words ? `${words}: ` : ''}${detail}`, { cause: err });
  if (code) (out as NodeJS.ErrnoException).code = code;
  return out;
}

function isSecureUrlSafe(url: string): boolean {
  try {
    return isSecureUrl(url);
  } catch {
    return false;
  }
}
