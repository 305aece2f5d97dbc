/**
 * TLS (`wss://`) on the WebSocket transport: certificates are made with the openssl CLI in a temp
 * dir; every refusal must reject `connect` with a message naming the cause, and leave the server
 * serving.
 */
import { chmodSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Decoded } from '../transport/codec.js';
import type { Message } from '../transport/messages.js';
import { loadTlsFiles, type TlsOptions } from '../transport/tls.js';
import type { Connection, Listener } from '../transport/types.js';
import { WebSocketTransport } from '../transport/ws.js';
import { certMaker } from './certs.js';
import { tempDir, waitFor } from './helpers.js';

const MARKER = 'plaintext-marker-7f3a9c';
/** Makes an `error` frame of about 100 bytes: past a 64-byte limit, short of the 128 bytes where ws itself closes. */
const BIG = 'x'.repeat(30);

let t: ReturnType<typeof tempDir>;
const file = (name: string) => join(t.dir, name);
const makeCa = (name: string) => certMaker(t.dir).ca(name);
const makeCert = (name: string, ca: string, san: string, days = 2) => certMaker(t.dir).cert(name, ca, san, days);

/** TLS options from `<cert>.crt`/`<cert>.key`, trusting `<ca>.crt`. */
function tls(cert: string, ca: string, extra: Partial<TlsOptions> = {}): TlsOptions {
  return {
    ...loadTlsFiles({ certFile: file(`${cert}.crt`), keyFile: file(`${cert}.key`), caFile: file(`${ca}.crt`) }),
    ...extra,
  };
}

beforeAll(() => {
  t = tempDir();
  makeCa('ca'); // the cluster's CA
  makeCa('other-ca'); // an unrelated CA
  makeCert('replica', 'ca', 'IP:127.0.0.1');
  makeCert('node', 'ca', 'DNS:node-1');
  makeCert('wrong-host', 'ca', 'DNS:replica-9.example');
  makeCert('expired', 'ca', 'IP:127.0.0.1', -1);
  makeCert('stranger', 'other-ca', 'IP:127.0.0.1');
});
afterAll(() => t.cleanup());

/** Everything to close after a test. */
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A listener that answers every ping with a pong, preceded by `extra` if given (sent on a ping rather
 * than on connect, so the client is listening by then).
 */
async function echoServer(transport: WebSocketTransport, extra?: Message): Promise<Listener & { accepted: number }> {
  const listener = await transport.listen({ host: '127.0.0.1' });
  const out = Object.assign(listener, { accepted: 0 });
  listener.onConnection((conn) => {
    out.accepted++;
    conn.onFrame((f) => {
      if (!f.ok || f.msg.type !== 'ping') return;
      if (extra) conn.send(extra);
      conn.send({ type: 'pong', t: f.msg.t });
    });
  });
  cleanups.push(() => listener.close());
  return out;
}

/** The next frame `conn` receives. */
function nextFrame(conn: Connection): Promise<Decoded> {
  return new Promise((resolve) => conn.onFrame(resolve));
}

/** Send a ping and return the first frame that comes back (the server's `extra`, if it has one). */
function ping(conn: Connection, t = 1): Promise<Decoded> {
  const reply = nextFrame(conn);
  expect(conn.send({ type: 'ping', t })).toBe(true);
  return reply;
}

async function connect(transport: WebSocketTransport, url: string): Promise<Connection> {
  const conn = await transport.connect(url, { timeoutMs: 3000 });
  cleanups.push(() => conn.terminate());
  return conn;
}

/** Connect, ping, expect the pong: the listener is serving. */
async function roundTrip(transport: WebSocketTransport, url: string, t = 1): Promise<void> {
  const conn = await connect(transport, url);
  expect(await ping(conn, t)).toEqual({ ok: true, msg: { type: 'pong', t } });
}

/** A TCP relay to `port` that records the bytes going each way. */
async function tapProxy(port: number): Promise<{ port: number; toServer: Buffer[]; toClient: Buffer[] }> {
  const toServer: Buffer[] = [];
  const toClient: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    client.on('data', (b) => {
      toServer.push(b);
      upstream.write(b);
    });
    upstream.on('data', (b) => {
      toClient.push(b);
      client.write(b);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port: (server.address() as AddressInfo).port, toServer, toClient };
}

const portOf = (url: string) => Number(new URL(url).port);

describe('WebSocketTransport over TLS', () => {
  it('frames round-trip over wss:// both ways', async () => {
    const server = await echoServer(new WebSocketTransport({ tls: tls('replica', 'ca') }), {
      type: 'error',
      code: 'HELLO',
      message: 'from the server',
      retryable: false,
    });
    expect(server.url).toMatch(/^wss:\/\/127\.0\.0\.1:\d+$/);
    const conn = await connect(new WebSocketTransport({ tls: tls('node', 'ca') }), server.url);
    const frames: Decoded[] = [];
    conn.onFrame((f) => frames.push(f));
    conn.send({ type: 'ping', t: 7 });
    await waitFor('two frames', () => frames.length === 2);
    expect(frames).toEqual([
      { ok: true, msg: { type: 'error', code: 'HELLO', message: 'from the server', retryable: false } },
      { ok: true, msg: { type: 'pong', t: 7 } },
    ]);
  });

  it('keeps the frame size limit given with the options object', async () => {
    const server = await echoServer(new WebSocketTransport({ maxFrameBytes: 64, tls: tls('replica', 'ca') }), {
      type: 'error',
      code: 'BIG',
      message: BIG,
      retryable: false,
    });
    const conn = await connect(new WebSocketTransport({ maxFrameBytes: 64, tls: tls('node', 'ca') }), server.url);
    const f = await ping(conn);
    expect(f.ok ? 'ok' : f.code).toBe('FRAME_TOO_LARGE');
  });

  it('encrypts: a relay sees TLS records and never the plaintext (and does see it over ws://)', async () => {
    const greeting: Message = { type: 'error', code: 'MARK', message: MARKER, retryable: false };
    // Over wss://: the client receives the marker, the wire never carries it.
    const secure = await echoServer(new WebSocketTransport({ tls: tls('replica', 'ca') }), greeting);
    const tap = await tapProxy(portOf(secure.url));
    const conn = await connect(new WebSocketTransport({ tls: tls('node', 'ca') }), `wss://127.0.0.1:${tap.port}`);
    expect(await ping(conn)).toEqual({ ok: true, msg: greeting });
    const up = Buffer.concat(tap.toServer);
    const down = Buffer.concat(tap.toClient);
    expect([up[0], up[1]]).toEqual([0x16, 0x03]); // a TLS handshake record
    expect([down[0], down[1]]).toEqual([0x16, 0x03]);
    expect(down.includes(MARKER)).toBe(false);
    expect(up.includes('Upgrade')).toBe(false); // the HTTP upgrade request is inside TLS too

    // The same relay over plain ws:// does see it: the check above can fail.
    const plain = await echoServer(new WebSocketTransport(), greeting);
    const plainTap = await tapProxy(portOf(plain.url));
    const plainConn = await connect(new WebSocketTransport(), `ws://127.0.0.1:${plainTap.port}`);
    expect(await ping(plainConn)).toEqual({ ok: true, msg: greeting });
    expect(Buffer.concat(plainTap.toClient).includes(MARKER)).toBe(true);
  });

  it('refuses a server whose certificate is not signed by the configured CA', async () => {
    const server = await echoServer(new WebSocketTransport({ tls: tls('replica', 'ca') }));
    const err = await new WebSocketTransport({ tls: tls('stranger', 'other-ca') })
      .connect(server.url)
      .catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(
      /not signed by the configured CA: .*\((SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE)\)$/,
    );
    expect(server.accepted).toBe(0);
    await roundTrip(new WebSocketTransport({ tls: tls('node', 'ca') }), server.url);
    expect(server.accepted).toBe(1);
  });

  it('refuses a certificate for another host', async () => {
    const server = await echoServer(new WebSocketTransport({ tls: tls('wrong-host', 'ca') }));
    const err = await new WebSocketTransport({ tls: tls('node', 'ca') }).connect(server.url).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/does not name this host.*ERR_TLS_CERT_ALTNAME_INVALID/);
    expect(server.accepted).toBe(0);
  });

  it('refuses an expired certificate', async () => {
    const server = await echoServer(new WebSocketTransport({ tls: tls('expired', 'ca') }));
    const err = await new WebSocketTransport({ tls: tls('node', 'ca') }).connect(server.url).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/has expired.*CERT_HAS_EXPIRED/);
    expect(server.accepted).toBe(0);
  });

  it('a plaintext client to a wss:// server fails clearly, and the server keeps serving', async () => {
    const server = await echoServer(new WebSocketTransport({ tls: tls('replica', 'ca') }));
    const plainUrl = server.url.replace(/^wss:/, 'ws:');
    const err = await new WebSocketTransport().connect(plainUrl, { timeoutMs: 3000 }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/if it is a wss:\/\/ listener, use a wss:\/\/ URL/);
    // A TLS transport told not to require TLS takes the same plaintext path and fails the same way.
    const lax = await new WebSocketTransport({ tls: tls('node', 'ca', { require: false }) })
      .connect(plainUrl, { timeoutMs: 3000 })
      .catch((e: Error) => e);
    expect((lax as Error).message).toMatch(/use a wss:\/\/ URL/);
    expect(server.accepted).toBe(0);
    await roundTrip(new WebSocketTransport({ tls: tls('node', 'ca') }), server.url);
  });

  it('a TLS client to a plain ws:// server fails clearly, and the server keeps serving', async () => {
    const server = await echoServer(new WebSocketTransport());
    const tlsUrl = server.url.replace(/^ws:/, 'wss:');
    const err = await new WebSocketTransport({ tls: tls('node', 'ca') })
      .connect(tlsUrl, { timeoutMs: 3000 })
      .catch((e: Error) => e);
    expect((err as Error).message).toMatch(/does not speak TLS .*: wrong version number \(EPROTO\)$/);
    expect(server.accepted).toBe(0);
    await roundTrip(new WebSocketTransport(), server.url);
  });

  it('with TLS required (the default) refuses a ws:// URL instead of downgrading', async () => {
    const server = await echoServer(new WebSocketTransport());
    const err = await new WebSocketTransport({ tls: tls('node', 'ca') }).connect(server.url).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/TLS is required/);
    const explicit = await new WebSocketTransport({ tls: tls('node', 'ca', { require: true }) })
      .connect(server.url)
      .catch((e: Error) => e);
    expect((explicit as Error).message).toMatch(/TLS is required/);
    expect(server.accepted).toBe(0);
    // require: false lets the same URL through, so the refusal above is the option's doing.
    await roundTrip(new WebSocketTransport({ tls: tls('node', 'ca', { require: false }) }), server.url);
    expect(server.accepted).toBe(1);
  });

  it('refuses a wss:// URL when no TLS is configured (no trust in the system CAs)', async () => {
    const server = await echoServer(new WebSocketTransport({ tls: tls('replica', 'ca') }));
    const err = await new WebSocketTransport().connect(server.url).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/needs the transport's tls option/);
    expect(server.accepted).toBe(0);
  });

  it('mutual TLS: a client certificate from another CA is refused, one from the CA is accepted', async () => {
    const server = await echoServer(new WebSocketTransport({ tls: tls('replica', 'ca', { requireClientCert: true }) }));
    // The stranger trusts the cluster CA (so it accepts the server) but its own cert is from another CA.
    const err = await new WebSocketTransport({ tls: tls('stranger', 'ca') })
      .connect(server.url, { timeoutMs: 3000 })
      .catch((e: Error) => e);
    expect((err as Error).message).toMatch(
      /closed the connection during the handshake \(a server requiring client certificates .*\(ECONNRESET\)$/,
    );
    expect(server.accepted).toBe(0);
    await roundTrip(new WebSocketTransport({ tls: tls('node', 'ca') }), server.url);
    expect(server.accepted).toBe(1);
    // Without requireClientCert the same stranger gets in: the refusal was the client certificate check.
    const open = await echoServer(new WebSocketTransport({ tls: tls('replica', 'ca') }));
    await roundTrip(new WebSocketTransport({ tls: tls('stranger', 'ca') }), open.url);
  });
});

describe('TLS configuration', () => {
  it('loadTlsFiles names the file it cannot read', () => {
    expect(() =>
      loadTlsFiles({ certFile: file('replica.crt'), keyFile: file('missing.key'), caFile: file('ca.crt') }),
    ).toThrow(`cannot read TLS key file ${file('missing.key')}: no such file`);
    writeFileSync(file('not-pem.crt'), 'hello');
    expect(() =>
      loadTlsFiles({ certFile: file('not-pem.crt'), keyFile: file('replica.key'), caFile: file('ca.crt') }),
    ).toThrow(/TLS certificate file .*not-pem\.crt is not PEM/);
    if (process.getuid?.() !== 0) {
      writeFileSync(file('locked.crt'), 'x');
      chmodSync(file('locked.crt'), 0o000);
      expect(() =>
        loadTlsFiles({ certFile: file('replica.crt'), keyFile: file('replica.key'), caFile: file('locked.crt') }),
      ).toThrow(/cannot read TLS CA file .*locked\.crt: permission denied/);
    }
    const ok = loadTlsFiles({ certFile: file('replica.crt'), keyFile: file('replica.key'), caFile: file('ca.crt') });
    expect(ok.cert.toString()).toContain('-----BEGIN CERTIFICATE-----');
  });

  it('a key that does not match the certificate fails at construction', () => {
    const mismatched = { ...tls('replica', 'ca'), key: tls('node', 'ca').key };
    expect(() => new WebSocketTransport({ tls: mismatched })).toThrow(/invalid TLS configuration/);
  });

  it('a plain number still sets the frame limit', async () => {
    const server = await echoServer(new WebSocketTransport(64), {
      type: 'error',
      code: 'BIG',
      message: BIG,
      retryable: false,
    });
    const conn = await connect(new WebSocketTransport(64), server.url);
    expect(await ping(conn).then((f) => (f.ok ? 'ok' : f.code))).toBe('FRAME_TOO_LARGE');
  });
});
