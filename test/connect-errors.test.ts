/**
 * A node agent that cannot reach its storage says why, over real sockets: every failed attempt is
 * logged with its cause, every failed round over the replicas is an event, and `start()` gives up
 * after `startTimeoutMs` with each replica's last cause. A lost session is logged with why.
 */
import { createServer, type Server } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { pino, type Logger } from 'pino';
import { NodeAgent, type ConnectRound } from '../actors/node-agent.js';
import { Application } from '../actors/application.js';
import { SafeResumeError } from '../errors.js';
import { WebSocketTransport } from '../transport/ws.js';
import { freePort } from '../transport/ports.js';
import { clusters, waitFor } from './helpers.js';

type Line = Record<string, unknown> & { msg: string; level: number };

/** A logger whose lines (pino's JSON, every level) land in `lines`. */
function capture(): { lines: Line[]; log: Logger } {
  const lines: Line[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Line) });
  return { lines, log };
}

const agents: NodeAgent[] = [];
const servers: Server[] = [];
afterEach(async () => {
  for (const a of agents.splice(0)) a.crash();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

function agent(replicas: string[], log: Logger, extra: { startTimeoutMs?: number } = {}): NodeAgent {
  const a = new NodeAgent({
    id: 'node-1',
    replicas,
    transport: new WebSocketTransport(),
    secret: 'k'.repeat(32),
    backoffBaseMs: 20,
    backoffMaxMs: 100,
    connectTimeoutMs: 1000,
    env: { log },
    ...extra,
  });
  agents.push(a);
  return a;
}

/** A plain HTTP server: answers every request (an upgrade too) 200 with a page. */
async function plainHttp(): Promise<string> {
  const s = createServer((_req, res) => res.end('<html>not a replica</html>'));
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const addr = s.address();
  return `ws://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
}

describe('a node agent that cannot reach its storage', () => {
  it('nothing listening: each failed round is an event, each attempt a log line with ECONNREFUSED, and start() rejects after startTimeoutMs naming the cause', async () => {
    const url = `ws://127.0.0.1:${await freePort()}`;
    const { lines, log } = capture();
    const a = agent([url], log, { startTimeoutMs: 1200 });
    const rounds: ConnectRound[] = [];
    a.on('connect-failed', (r) => rounds.push(r));
    const t0 = Date.now();
    const err = await a.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1100);
    expect(err).toBeInstanceOf(SafeResumeError);
    expect((err as SafeResumeError).code).toBe('UNAVAILABLE');
    expect((err as Error).message).toContain(url);
    expect((err as Error).message).toContain('ECONNREFUSED');
    expect((err as SafeResumeError & { causes?: unknown }).causes).toEqual([
      expect.objectContaining({ replica: url, cause: 'ECONNREFUSED' }),
    ]);
    expect(rounds.length).toBeGreaterThanOrEqual(2);
    expect(rounds[0]).toEqual({ round: 1, causes: [expect.objectContaining({ replica: url, cause: 'ECONNREFUSED' })] });
    const failed = lines.filter((l) => l.msg.startsWith('could not connect'));
    expect(failed.length).toBeGreaterThanOrEqual(2);
    expect(failed[0]).toMatchObject({ actor: 'node-1', replica: url, cause: 'ECONNREFUSED' });
    // What the agent says of itself while it tries (status views show it).
    expect(a.connectCauses).toEqual([expect.objectContaining({ replica: url, cause: 'ECONNREFUSED' })]);
  });

  it("a plain HTTP server and nothing: start() rejects with both replicas' causes, the HTTP answer named as not a WebSocket", async () => {
    const http = await plainHttp();
    const none = `ws://127.0.0.1:${await freePort()}`;
    const { lines, log } = capture();
    const a = agent([http, none], log, { startTimeoutMs: 1000 });
    const err = (await a.start().then(
      () => undefined,
      (e: unknown) => e,
    )) as SafeResumeError & { causes?: Array<{ replica: string; cause: string; message: string }> };
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.causes?.map((c) => [c.replica, c.cause])).toEqual([
      [http, 'NOT_WEBSOCKET'],
      [none, 'ECONNREFUSED'],
    ]);
    expect(err.causes?.[0]?.message).toMatch(/HTTP 200/);
    expect(err.message).toMatch(/NOT_WEBSOCKET/);
    expect(
      lines.some((l) => l.msg.startsWith('could not connect') && l.cause === 'NOT_WEBSOCKET' && l.replica === http),
    ).toBe(true);
  });

  it('a flood of failed attempts is rate-limited in the log', async () => {
    const url = `ws://127.0.0.1:${await freePort()}`;
    const { lines, log } = capture();
    const a = new NodeAgent({
      id: 'node-1',
      replicas: [url],
      transport: new WebSocketTransport(),
      secret: 'k'.repeat(32),
      backoffBaseMs: 1,
      backoffMaxMs: 2,
      env: { log },
    });
    agents.push(a);
    let rounds = 0;
    a.on('connect-failed', () => rounds++);
    void a.start().catch(() => undefined);
    await waitFor('many failed rounds', () => rounds >= 60, 10_000);
    const failed = lines.filter((l) => l.msg.startsWith('could not connect'));
    expect(failed.length).toBeGreaterThan(0);
    expect(failed.length).toBeLessThan(rounds);
  });
});

describe('a node agent logs its pauses', () => {
  const start = clusters();

  it('a replica killed under a session: one info line saying the handles paused and why, then the resume batch', async () => {
    const c = await start({ replicas: 2 });
    const { lines, log } = capture();
    const a = await c.addNode('node-1', { env: { log } });
    const app = new Application(a, { name: 'app-1' });
    const h = await app.open('t1.disk');
    await h.write(0, new Uint8Array([1]));
    await c.kill(c.servingIndex(a));
    await waitFor('the resume', () => lines.some((l) => l.msg === 'handles resumed'), 10_000);
    const paused = lines.filter((l) => l.msg === 'handles paused');
    expect(paused).toHaveLength(1);
    expect(paused[0]).toMatchObject({ level: 30, actor: 'node-1', paused: 1 });
    expect(String(paused[0]!.why)).toMatch(/^socket closed/);
    expect(lines.findIndex((l) => l.msg === 'handles paused')).toBeLessThan(
      lines.findIndex((l) => l.msg === 'handles resumed'),
    );
    await app.close();
  });

  it('a replica whose store goes away: the pause is logged with why (notice unavailable)', async () => {
    const c = await start({ replicas: 1 });
    const { lines, log } = capture();
    const a = await c.addNode('node-1', { env: { log } });
    const app = new Application(a, { name: 'app-1' });
    const h = await app.open('t1.disk');
    await h.write(0, new Uint8Array([1]));
    c.replica(0).dismount();
    await waitFor('the pause', () => h.state === 'paused', 10_000);
    const paused = lines.filter((l) => l.msg === 'handles paused');
    expect(paused).toEqual([expect.objectContaining({ level: 30, paused: 1, why: 'notice unavailable' })]);
    c.replica(0).mount();
    await waitFor('the resume', () => h.state === 'active', 10_000);
    await app.close();
  });
});
