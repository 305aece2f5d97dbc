/**
 * The lock on the local control plane (SPEC "Bad input and trust"): the control endpoint, the
 * inspector's page server and the Stately relay listen on 127.0.0.1 and answer only a request that
 * names them by a loopback Host (a foreign name is DNS rebinding), comes from no foreign Origin (a
 * page the user happens to visit can send cross-site POSTs and WebSocket upgrades to 127.0.0.1),
 * and, for anything that shows or changes the cluster's state, carries the control token: a random
 * secret the launcher keeps in the 0600 control.json, read by the CLI and handed to the page in the
 * fragment of the address `up` prints.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/** A fresh control token: 32 random bytes, base64url. */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

/** Whether `given` is `expected`, in constant time (digests are compared, so lengths leak nothing either). */
export function sameSecret(given: string | undefined | null, expected: string): boolean {
  if (typeof given !== 'string' || given.length === 0) return false;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/** Why a request is refused, and with which status. */
export interface Refusal {
  status: 401 | 403 | 404;
  code: 'AUTH_FAILED' | 'FORBIDDEN' | 'INVALID_ARGUMENT';
  message: string;
}

/** The names a loopback listener on `port` may be reached by. */
const LOOPBACK_NAMES = ['127.0.0.1', 'localhost', '[::1]'];

/**
 * Host and Origin: the Host must be a loopback name with this port; an Origin, if any, must be this
 * server's own (`same`: a page it served) or there must be none at all (`none`: an endpoint only
 * programs talk to, like the control endpoint the CLI uses).
 */
export function checkHostOrigin(req: IncomingMessage, port: number, origin: 'same' | 'none'): Refusal | undefined {
  const host = (req.headers.host ?? '').toLowerCase();
  if (!LOOPBACK_NAMES.some((n) => host === `${n}:${port}`)) {
    return {
      status: 403,
      code: 'FORBIDDEN',
      message: `Host ${JSON.stringify(host)} is not this endpoint (127.0.0.1:${port} or localhost:${port})`,
    };
  }
  const from = req.headers.origin;
  if (from === undefined) return undefined;
  if (origin === 'none')
    return {
      status: 403,
      code: 'FORBIDDEN',
      message: 'this endpoint takes no request from a web page (Origin present)',
    };
  if (!LOOPBACK_NAMES.some((n) => from.toLowerCase() === `http://${n}:${port}`)) {
    return { status: 403, code: 'FORBIDDEN', message: `Origin ${JSON.stringify(from)} is not this page's own` };
  }
  return undefined;
}

/** The token of an `Authorization: Bearer <token>` header. */
export function bearer(req: IncomingMessage): string | undefined {
  return /^Bearer +(\S+)$/i.exec(req.headers.authorization ?? '')?.[1];
}

/** 401 unless `given` is the token. */
export function checkToken(
  given: string | undefined | null,
  token: string,
  what = 'the control token',
): Refusal | undefined {
  if (sameSecret(given, token)) return undefined;
  return {
    status: 401,
    code: 'AUTH_FAILED',
    message: `${what} is ${given ? 'wrong' : 'missing'} (the CLI reads it from <dir>/control.json; the inspector's address printed by up carries it)`,
  };
}

/** Answer an HTTP request with the refusal, as JSON like every control answer. */
export function refuse(res: ServerResponse, r: Refusal): void {
  res.writeHead(r.status, { 'content-type': 'application/json', connection: 'close' });
  res.end(JSON.stringify({ ok: false, code: r.code, message: r.message }));
}

/** Answer a WebSocket upgrade with the refusal, before any handshake, and close the connection. */
export function refuseUpgrade(socket: Duplex, r: Refusal): void {
  const body = JSON.stringify({ ok: false, code: r.code, message: r.message });
  socket.on('error', () => undefined);
  socket.end(
    `HTTP/1.1 ${r.status} ${STATUS_CODES[r.status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}
