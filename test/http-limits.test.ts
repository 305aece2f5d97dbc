/**
 * The local control endpoints cap request bodies: a large one is answered 413 and never buffered.
 * (The requests carry the control token: without it nothing is read at all, see control-plane.test.ts.)
 * They drop a client that never finishes its headers within seconds, and hold a bounded number of
 * connections.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { InspectorServer } from '../runtime/inspector-server.js';
import { MAX_BODY_BYTES } from '../runtime/http-body.js';
import { HTTP_TIMEOUTS, MAX_HTTP_CONNECTIONS } from '../runtime/http-limits.js';
import { connect, type Socket } from 'node:net';

let server: InspectorServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function inspector(): Promise<{ url: string; commands: string[]; headers: Record<string, string> }> {
  const commands: string[] = [];
  server = new InspectorServer({
    watching: () => undefined,
    status: () => ({ ok: true }),
    command: async (_m, path, body) => {
      commands.push(`${path} ${body.length}`);
      return { ok: true };
    },
  });
  return { url: await server.listen(0), commands, headers: { authorization: `Bearer ${server.token}` } };
}

describe('request bodies of the inspector API', () => {
  it(`a body over ${MAX_BODY_BYTES / 1024} KiB is refused with 413 and never reaches a command; the server goes on`, async () => {
    const { url, commands, headers } = await inspector();
    const big = await fetch(`${url}/api/kill`, { method: 'POST', body: 'x'.repeat(600 * 1024), headers });
    expect(big.status).toBe(413);
    expect(commands).toEqual([]);
    const small = await fetch(`${url}/api/kill`, {
      method: 'POST',
      body: JSON.stringify({ id: 'replica-1' }),
      headers,
    });
    expect(small.status).toBe(200);
    expect(commands).toEqual([`/kill ${JSON.stringify({ id: 'replica-1' }).length}`]);
    expect((await fetch(`${url}/api/status`, { headers })).status).toBe(200);
  });

  it('a body sent in chunks with no declared length is cut off at the limit too', async () => {
    const { url, commands, headers } = await inspector();
    const chunks = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 20; i++) c.enqueue(new Uint8Array(16 * 1024));
        c.close();
      },
    });
    const r = await fetch(`${url}/api/kill`, {
      method: 'POST',
      body: chunks,
      duplex: 'half',
      headers,
    });
    expect(r.status).toBe(413);
    expect(commands).toEqual([]);
  });
});

describe('connections of the inspector', () => {
  /** Open a connection that sends the start of a request and never finishes its headers; resolves once connected. */
  const unfinished = (port: number) =>
    new Promise<{ socket: Socket; closed: () => boolean }>((resolve, reject) => {
      let closed = false;
      const socket = connect(port, '127.0.0.1', () => {
        socket.write('GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n');
        resolve({ socket, closed: () => closed });
      });
      socket.on('error', () => undefined);
      socket.on('close', () => (closed = true));
      // Read what comes (a 408), so the end of the connection is seen.
      socket.resume();
      socket.once('error', reject);
    });

  it(`a client that never finishes its headers is dropped ${HTTP_TIMEOUTS.headersTimeout / 1000} s later, not half a minute`, async () => {
    const port = Number(new URL((await inspector()).url).port);
    const slow = await Promise.all(Array.from({ length: 8 }, () => unfinished(port)));
    const t0 = Date.now();
    while (!slow.every((c) => c.closed()) && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 100));
    for (const c of slow) c.socket.destroy();
    expect(slow.map((c) => c.closed())).toEqual(slow.map(() => true));
    expect(Date.now() - t0).toBeLessThan(
      HTTP_TIMEOUTS.headersTimeout + 3 * HTTP_TIMEOUTS.connectionsCheckingInterval + 2000,
    );
  }, 30_000);

  it(`holds at most ${MAX_HTTP_CONNECTIONS} connections: the ones past it are closed at once, and the page's requests get in again once they go`, async () => {
    const { url, headers } = await inspector();
    const port = Number(new URL(url).port);
    const held = await Promise.all(Array.from({ length: MAX_HTTP_CONNECTIONS + 10 }, () => unfinished(port)));
    try {
      await new Promise((r) => setTimeout(r, 500));
      expect(held.filter((c) => c.closed()).length).toBeGreaterThanOrEqual(10);
    } finally {
      for (const c of held) c.socket.destroy();
    }
    await new Promise((r) => setTimeout(r, 200));
    expect((await fetch(`${url}/api/status`, { headers })).status).toBe(200);
  }, 30_000);
});
