/**
 * The local control endpoints cap request bodies: a large one is answered 413 and never buffered.
 * (The requests carry the control token: without it nothing is read at all, see control-plane.test.ts.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { InspectorServer } from '../cluster/inspector-server.js';
import { MAX_BODY_BYTES } from '../cluster/http-body.js';

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
    const small = await fetch(`${url}/api/kill`, { method: 'POST', body: JSON.stringify({ id: 'replica-1' }), headers });
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
    const r = await fetch(`${url}/api/kill`, { method: 'POST', body: chunks, duplex: 'half', headers } as RequestInit & { duplex: 'half' });
    expect(r.status).toBe(413);
    expect(commands).toEqual([]);
  });
});
