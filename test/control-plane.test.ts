/**
 * The local control plane is locked (SPEC "Bad input and trust"): the inspector's page server takes
 * /api and /stream only with the control token, only under a loopback Host, and from no foreign
 * Origin; /inspect takes only the cluster's own processes, each under its own name, with bounded
 * messages and bounded memory; the Stately relay listens on 127.0.0.1 only, behind the same lock.
 * (The control endpoint of a running cluster, the CLI and `up --stately` are in cluster.e2e.test.ts.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createActor, createMachine } from 'xstate';
import { processInspector } from '../runtime/inspect.js';
import { InspectorServer, MAX_ACTOR_CHARS, MAX_INSPECT_MESSAGE, StatelyRelay } from '../runtime/inspector-server.js';
import { raw, upgrade } from './http-client.js';
import { waitFor } from './helpers.js';

let server: InspectorServer | undefined;
let relay: StatelyRelay | undefined;
afterEach(async () => {
  await server?.close();
  await relay?.close();
  server = relay = undefined;
});

async function inspector(): Promise<{ url: string; port: number; token: string; commands: string[] }> {
  const commands: string[] = [];
  server = new InspectorServer({
    watching: () => undefined,
    status: () => ({ ok: true, replicas: [] }),
    command: async (_m, path) => {
      commands.push(path);
      return { ok: true };
    },
  });
  const url = await server.listen(0);
  return { url, port: Number(new URL(url).port), token: server.token, commands };
}

const ws = (url: string) => url.replace('http', 'ws');
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const KILL = { method: 'POST', headers: { 'content-type': 'text/plain' }, body: JSON.stringify({ id: 'replica-3' }) };

describe('the inspector page server', () => {
  it('loads the page and its scripts without the token; /api/status, /api/kill and /stream refuse a request without it, or with a wrong one (401 AUTH_FAILED)', async () => {
    const { url, commands } = await inspector();
    for (const asset of ['/', '/inspector.js', '/elk.js']) expect((await raw(url + asset)).status, asset).toBe(200);
    for (const headers of [{}, bearer('wrong'), bearer('')]) {
      const status = await raw(`${url}/api/status`, { headers });
      expect(status.status).toBe(401);
      expect(JSON.parse(status.body)).toMatchObject({ ok: false, code: 'AUTH_FAILED' });
      const kill = await raw(`${url}/api/kill`, { ...KILL, headers: { ...KILL.headers, ...headers } });
      expect(kill.status).toBe(401);
      expect(JSON.parse(kill.body)).toMatchObject({ ok: false, code: 'AUTH_FAILED' });
      expect((await upgrade(`${ws(url)}/stream`, { headers })).status).toBe(401);
    }
    expect((await upgrade(`${ws(url)}/stream?token=wrong`)).status).toBe(401);
    expect(commands).toEqual([]);
  });

  it('with the token of the page URL (in its fragment, never sent to the server by a browser): /api/status, /api/kill and /stream work', async () => {
    const { url, token, commands } = await inspector();
    expect(server!.pageUrl).toBe(`${url}/#token=${token}`);
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/); // 32 random bytes
    expect((await raw(`${url}/api/status`, { headers: bearer(token) })).status).toBe(200);
    expect((await raw(`${url}/api/kill`, { ...KILL, headers: { ...KILL.headers, ...bearer(token) } })).status).toBe(
      200,
    );
    expect(commands).toEqual(['/kill']);
    const stream = await upgrade(`${ws(url)}/stream?token=${token}`);
    expect(stream.status).toBe(101);
    stream.ws!.close();
    // Another server, another token.
    const other = new InspectorServer({
      watching: () => undefined,
      status: () => ({}),
      command: async () => ({ ok: true }),
    });
    expect(other.token).not.toBe(token);
  });

  it('refuses a foreign Host (DNS rebinding) with 403, on the page, /api and /stream, the token notwithstanding', async () => {
    const { url, port, token } = await inspector();
    for (const host of [
      'evil.example',
      `evil.example:${port}`,
      `127.0.0.1:${port + 1}`,
      `127.0.0.1.evil.example:${port}`,
    ]) {
      expect((await raw(`${url}/`, { headers: { host } })).status, host).toBe(403);
      const status = await raw(`${url}/api/status`, { headers: { host, ...bearer(token) } });
      expect(status.status, host).toBe(403);
      expect(JSON.parse(status.body)).toMatchObject({ ok: false, code: 'FORBIDDEN' });
      expect((await upgrade(`${ws(url)}/stream?token=${token}`, { headers: { host } })).status, host).toBe(403);
    }
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`]) {
      expect((await raw(`${url}/api/status`, { headers: { host, ...bearer(token) } })).status, host).toBe(200);
    }
  });

  it('refuses a foreign Origin with 403: a cross-site POST and a cross-site WebSocket, the token notwithstanding; its own origin works', async () => {
    const { url, port, token, commands } = await inspector();
    for (const origin of ['http://evil.example', 'null', `http://127.0.0.1:${port + 1}`, `https://127.0.0.1:${port}`]) {
      const kill = await raw(`${url}/api/kill`, { ...KILL, headers: { ...KILL.headers, origin, ...bearer(token) } });
      expect(kill.status, origin).toBe(403);
      expect(JSON.parse(kill.body)).toMatchObject({ ok: false, code: 'FORBIDDEN' });
      expect((await upgrade(`${ws(url)}/stream?token=${token}`, { origin })).status, origin).toBe(403);
    }
    expect(commands).toEqual([]);
    for (const origin of [`http://127.0.0.1:${port}`, `http://localhost:${port}`]) {
      expect(
        (await raw(`${url}/api/kill`, { ...KILL, headers: { ...KILL.headers, origin, ...bearer(token) } })).status,
        origin,
      ).toBe(200);
      const stream = await upgrade(`${ws(url)}/stream?token=${token}`, { origin });
      expect(stream.status, origin).toBe(101);
      stream.ws!.close();
    }
  });
});

/** A registration as a process sends it, padded to about `chars` characters. */
const registration = (id: string, chars = 0) => ({
  type: '@xstate.actor',
  sessionId: id,
  name: 'fake',
  definition: 'x'.repeat(chars),
});

describe("/inspect: only the cluster's own processes", () => {
  it('refuses a connection without the credential of its name, with the credential of another name, or from a browser; takes its own', async () => {
    const { url } = await inspector();
    const credential = server!.processCredential('replica-1');
    expect(credential).not.toBe(server!.processCredential('replica-2'));
    expect((await upgrade(`${ws(url)}/inspect?from=replica-1`)).status).toBe(401);
    expect((await upgrade(`${ws(url)}/inspect?from=replica-1`, { headers: bearer(server!.token) })).status).toBe(401);
    expect((await upgrade(`${ws(url)}/inspect?from=replica-2`, { headers: bearer(credential) })).status).toBe(401);
    expect((await upgrade(`${ws(url)}/inspect`, { headers: bearer(credential) })).status).toBe(401);
    expect(
      (
        await upgrade(`${ws(url)}/inspect?from=replica-1`, {
          headers: bearer(credential),
          origin: `http://127.0.0.1:${new URL(url).port}`,
        })
      ).status,
    ).toBe(403);

    const proc = await upgrade(`${ws(url)}/inspect?from=replica-1`, { headers: bearer(credential) });
    expect(proc.status).toBe(101);
    proc.ws!.send(JSON.stringify([registration('x:0')]));
    const page = await upgrade(`${ws(url)}/stream?token=${server!.token}`);
    const seen = page.seen;
    await waitFor('the registration', () => seen.events.length > 0);
    expect(seen.events).toEqual([expect.objectContaining({ sessionId: 'x:0', process: 'replica-1' })]);
    proc.ws!.close();
    page.ws!.close();
  });

  it('caps a message at 1 MiB: a larger one closes the connection (1009) and none of it is kept', async () => {
    const { url } = await inspector();
    expect(MAX_INSPECT_MESSAGE).toBe(1024 * 1024);
    const proc = await upgrade(`${ws(url)}/inspect?from=node-1`, {
      headers: bearer(server!.processCredential('node-1')),
    });
    expect(proc.status).toBe(101);
    const closed = new Promise<number>((r) => proc.ws!.once('close', (code) => r(code)));
    proc.ws!.send(JSON.stringify([registration('x:0', 2 * 1024 * 1024)]));
    expect(await closed).toBe(1009);
    const page = await upgrade(`${ws(url)}/stream?token=${server!.token}`);
    const seen = page.seen;
    await new Promise((r) => setTimeout(r, 200));
    expect(seen.events).toEqual([]);
    page.ws!.close();
  });

  it('keeps actor registrations bounded in bytes, not only in count: of 20 MiB of them at most 16 MiB, the newest', async () => {
    const { url } = await inspector();
    const proc = await upgrade(`${ws(url)}/inspect?from=node-1`, {
      headers: bearer(server!.processCredential('node-1')),
    });
    expect(proc.status).toBe(101);
    // 100 registrations of 200 KiB, four to a message (under the message cap).
    for (let i = 0; i < 100; i += 4)
      proc.ws!.send(JSON.stringify([0, 1, 2, 3].map((k) => registration(`x:${i + k}`, 200 * 1024))));
    const marker = await upgrade(`${ws(url)}/inspect?from=node-2`, {
      headers: bearer(server!.processCredential('node-2')),
    });
    await new Promise<void>((r) => proc.ws!.once('close', () => r()).close());
    marker.ws!.send(JSON.stringify([registration('last')]));
    // The replay to a new page is what the server kept.
    await new Promise((r) => setTimeout(r, 300));
    const page = await upgrade(`${ws(url)}/stream?token=${server!.token}`);
    const seen = page.seen;
    await waitFor('the replay', () => seen.events.some((e) => e.sessionId === 'last'), 10_000);
    expect(MAX_ACTOR_CHARS).toBe(16 * 1024 * 1024);
    expect(seen.chars()).toBeLessThanOrEqual(MAX_ACTOR_CHARS + 64 * 1024);
    expect(seen.chars()).toBeGreaterThan(MAX_ACTOR_CHARS / 2);
    const ids = seen.events.map((e) => String(e.sessionId));
    expect(ids).toContain('x:99');
    expect(ids).not.toContain('x:0');
    page.ws!.close();
    marker.ws!.close();
  });
});

describe('a process under the message cap', () => {
  it('splits a turn of events over 1 MiB into messages under it: the connection stays up and every event arrives', async () => {
    const { url, token } = await inspector();
    // 400 actors of a 60-state machine, started in one turn: about 2 MiB of registrations.
    const states = Object.fromEntries(
      Array.from({ length: 60 }, (_, i) => [
        `state-number-${i}`,
        { on: { [`GO_TO_THE_NEXT_STATE_${i}`]: `state-number-${(i + 1) % 60}` } },
      ]),
    );
    const machine = createMachine({ id: 'big', initial: 'state-number-0', states });
    const insp = processInspector(`${ws(url)}/inspect?from=node-1`, server!.processCredential('node-1'));
    const page = await upgrade(`${ws(url)}/stream?token=${token}`);
    try {
      await waitFor('the process connected', () => server!['processes'].clients.size === 1);
      for (let i = 0; i < 400; i++) createActor(machine, { inspect: insp.inspect }).start();
      await waitFor(
        'every registration',
        () => page.seen.events.filter((e) => e.type === '@xstate.actor' && e.process === 'node-1').length === 400,
        10_000,
      );
      expect(page.seen.chars()).toBeGreaterThan(1.5 * MAX_INSPECT_MESSAGE);
      expect(server!['processes'].clients.size).toBe(1);
    } finally {
      insp.stop();
      page.ws?.close();
    }
  });
});

describe('the Stately relay (--stately)', () => {
  it('listens on 127.0.0.1 only; its event socket takes only its own page with the token; close() ends every connection', async () => {
    relay = new StatelyRelay();
    const url = await relay.listen(0);
    const port = Number(new URL(url).port);
    expect(url).toBe(`http://127.0.0.1:${port}`);
    expect(relay.address).toEqual({ address: '127.0.0.1', port });
    expect(relay.pageUrl).toBe(`${url}/#token=${relay.token}`);
    expect((await raw(`${url}/`)).status).toBe(200);
    expect((await raw(`${url}/`, { headers: { host: `evil.example:${port}` } })).status).toBe(403);
    expect((await upgrade(`${ws(url)}/events`)).status).toBe(401);
    expect((await upgrade(`${ws(url)}/events?token=wrong`)).status).toBe(401);
    expect((await upgrade(`${ws(url)}/events?token=${relay.token}`, { origin: 'http://evil.example' })).status).toBe(
      403,
    );
    expect(
      (await upgrade(`${ws(url)}/events?token=${relay.token}`, { headers: { host: `evil.example:${port}` } })).status,
    ).toBe(403);

    const page = await upgrade(`${ws(url)}/events?token=${relay.token}`, { origin: url });
    expect(page.status).toBe(101);
    const seen = page.seen;
    relay.send({ type: '@xstate.event', sessionId: 'node-1:x:0' });
    await waitFor('the relayed event', () => seen.events.length === 1);
    expect(seen.events[0]).toMatchObject({ sessionId: 'node-1:x:0' });

    const closed = new Promise((r) => page.ws!.once('close', r));
    await relay.close();
    await closed;
    relay = undefined;
  });
});
