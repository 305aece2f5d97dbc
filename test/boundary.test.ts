/** Bad input and trust at the replica's door, over a real WebSocket. */
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { pino } from 'pino';
import { StorageReplica } from '../actors/replica.js';
import { MemoryStore } from '../store/memory.js';
import { LogLimiter } from '../actors/log-limit.js';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Application } from '../actors/application.js';
import { loadOrCreateSecret } from '../actors/auth.js';
import { NodeAgent } from '../actors/node-agent.js';
import { LocalCluster } from '../cluster/local.js';
import { decode, encode } from '../transport/codec.js';
import type { Message } from '../transport/messages.js';
import { WebSocketTransport } from '../transport/ws.js';
import { bytes, loginAs, tempDir, text } from './helpers.js';

let cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function cluster(): Promise<LocalCluster> {
  const t = tempDir();
  const c = await LocalCluster.start({ dir: t.dir, replicas: 1 });
  cleanups.push(t.cleanup, () => c.stop());
  return c;
}

/** A raw WebSocket client that records every decoded reply. */
async function raw(url: string) {
  const ws = new WebSocket(url, { maxPayload: 16 * 1024 * 1024 });
  const replies: Message[] = [];
  let closed: { code: number; reason: string } | undefined;
  let login: ReturnType<typeof loginAs> | undefined;
  ws.on('message', (data: Buffer, isBinary) => {
    const d = decode(isBinary ? new Uint8Array(data) : data.toString());
    if (!d.ok) return;
    // The challenge of a login is answered here and kept out of the replies.
    let auth: Message | undefined;
    try {
      auth = login?.answer(d.msg);
    } catch {
      // Credentials that are not this cluster's: answer anyway, with a proof that cannot be right.
      auth = { type: 'auth', proof: 'A'.repeat(43), principals: [] };
    }
    if (auth) ws.send(encode(auth));
    else replies.push(d.msg);
  });
  ws.on('close', (code, reason) => (closed = { code, reason: reason.toString() }));
  await new Promise((r, j) => ws.once('open', r).once('error', j));
  cleanups.push(() => ws.terminate());
  const next = async (n: number) => {
    const deadline = Date.now() + 5000;
    while (replies.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    return replies[n - 1];
  };
  /** Authenticate as `node` with credentials issued from `secret`; the welcome is reply 1. */
  const hello = (secret: string, node = 'raw', principals = ['p']) => {
    login = loginAs(secret, node, principals);
    ws.send(encode(login.hello));
  };
  return { ws, replies, next, closed: () => closed, hello };
}

describe('bad frames', () => {
  it('answers each bad frame with a coded error and keeps serving that session and the others', async () => {
    const c = await cluster();
    const good = await new Application(await c.addNode('node-1'), { name: 'app-1' }).open('vm1.disk');
    await good.write(0, bytes('before'));

    const peer = await raw(c.urls[0]!);
    peer.hello(c.secret, 'raw');
    expect(await peer.next(1)).toMatchObject({ type: 'welcome' });

    const bad: Array<[string, Buffer | string, string]> = [
      ['garbage bytes', Buffer.from([0xde, 0xad, 0xbe, 0xef, 0, 1]), 'BAD_FRAME'],
      ['invalid JSON', '{"type":', 'BAD_FRAME'],
      ['unknown type', '{"type":"format","id":9}', 'UNKNOWN_TYPE'],
      [
        'wrong field types',
        '{"type":"open","id":10,"target":1,"requestId":true,"principal":"p","mode":"write"}',
        'BAD_FRAME',
      ],
      ['oversize', Buffer.alloc(3 * 1024 * 1024), 'FRAME_TOO_LARGE'],
      ['a reply type sent to a replica', '{"type":"closed","id":11}', 'BAD_FRAME'],
      [
        'a write on a handle never opened',
        encode({ type: 'write', id: 12, target: 't', requestId: 'r'.repeat(21), seq: 1, offset: 0, data: bytes('x') }),
        'NOT_OPEN',
      ],
    ];
    let n = 1;
    for (const [name, frame, code] of bad) {
      peer.ws.send(frame);
      const reply = await peer.next(++n);
      expect(reply, name).toMatchObject({ type: 'error', code });
    }
    // The id of a request that failed validation comes back, so a client can match it.
    expect(peer.replies.find((m) => m.type === 'error' && m.code === 'BAD_FRAME' && m.id === 10)).toBeDefined();
    // The same session still works ...
    peer.ws.send(encode({ type: 'ping', t: 1 }));
    expect(await peer.next(n + 1)).toMatchObject({ type: 'pong', t: 1 });
    expect(peer.closed()).toBeUndefined();
    // ... and so do the others.
    await good.write(6, bytes('+after'));
    expect(text(await good.read(0, 12))).toBe('before+after');
  });

  it('closes a peer that keeps sending bad frames', async () => {
    const c = await cluster();
    const peer = await raw(c.urls[0]!);
    peer.hello(c.secret, 'raw');
    await peer.next(1);
    for (let i = 0; i < 100; i++) peer.ws.send('nope');
    const deadline = Date.now() + 5000;
    while (!peer.closed() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(peer.closed()?.code).toBe(4002);
  });
});

describe('authentication', () => {
  it('refuses the wrong cluster secret with AUTH_FAILED and closes the connection', async () => {
    const c = await cluster();
    const peer = await raw(c.urls[0]!);
    peer.hello('not-the-secret', 'mallory');
    expect(await peer.next(1)).toMatchObject({ type: 'error', code: 'AUTH_FAILED' });
    const deadline = Date.now() + 5000;
    while (!peer.closed() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(peer.closed()?.code).toBe(4001);
  });

  it('refuses any request before hello', async () => {
    const c = await cluster();
    const peer = await raw(c.urls[0]!);
    peer.ws.send(encode({ type: 'ping', t: 1 }));
    expect(await peer.next(1)).toMatchObject({ type: 'error', code: 'AUTH_FAILED' });
  });

  it('a node agent with the wrong secret fails to start with a clear AUTH_FAILED error', async () => {
    const c = await cluster();
    const agent = new NodeAgent({
      id: 'node-x',
      replicas: c.urls,
      transport: new WebSocketTransport(),
      secret: 'wrong-secret-wrong-secret',
    });
    cleanups.push(() => agent.crash());
    await expect(agent.start()).rejects.toMatchObject({
      code: 'AUTH_FAILED',
      message: expect.stringContaining("did not prove it holds this node's key"),
    });
  });

  it('generates a default secret in the data directory (mode 0600) and reuses it', () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const s1 = loadOrCreateSecret(t.dir);
    const path = join(t.dir, 'cluster-secret');
    expect(existsSync(path)).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readFileSync(path, 'utf8').trim()).toBe(s1);
    expect(loadOrCreateSecret(t.dir)).toBe(s1);
    expect(s1.length).toBeGreaterThanOrEqual(32);
  });

  it('binds a requestId to its principal: another principal cannot reclaim it', async () => {
    const c = await cluster();
    const alice = new Application(await c.addNode('node-1'), { name: 'vm', principal: 'alice' });
    const h = await alice.open('vm1.disk');
    await h.write(0, bytes('alice'));
    // Even a principal alice lets write the target may not take her requestId.
    await alice.grant('vm1.disk', 'mallory', 'write');
    const mallory = new Application(await c.addNode('node-2'), { name: 'vm', principal: 'mallory' });
    await expect(mallory.open('vm1.disk', { requestId: h.requestId })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    expect(h.state).toBe('active');
    await h.write(5, bytes('!'));
    expect(text(await h.read(0, 6))).toBe('alice!');
  });
});

describe('limits of one operation', () => {
  it('a write larger than 1 MiB (1.5 MiB, inside the 2 MiB frame limit) is refused on the wire with BAD_FRAME, and the session keeps serving', async () => {
    const c = await cluster();
    const peer = await raw(c.urls[0]!);
    peer.hello(c.secret, 'raw');
    expect(await peer.next(1)).toMatchObject({ type: 'welcome' });
    const rid = 'R'.repeat(21);
    peer.ws.send(encode({ type: 'open', id: 1, target: 'big.disk', requestId: rid, principal: 'p', mode: 'write' }));
    expect(await peer.next(2)).toMatchObject({ type: 'opened', id: 1 });
    peer.ws.send(
      encode({
        type: 'write',
        id: 2,
        target: 'big.disk',
        requestId: rid,
        seq: 1,
        offset: 0,
        data: new Uint8Array(1536 * 1024),
      }),
    );
    const refused = await peer.next(3);
    expect(refused, JSON.stringify(refused)).toMatchObject({ type: 'error', code: 'BAD_FRAME' });
    peer.ws.send(
      encode({ type: 'write', id: 3, target: 'big.disk', requestId: rid, seq: 1, offset: 0, data: bytes('small') }),
    );
    expect(await peer.next(4)).toMatchObject({ type: 'written', id: 3, seq: 1 });
  });

  it('a write keeps the bytes it was given: a Node Buffer changed after write() returns does not change what is stored', async () => {
    const c = await cluster();
    const h = await new Application(await c.addNode('node-1'), { name: 'app-1' }).open('vm1.disk');
    const buf = Buffer.from('original');
    const written = h.write(0, buf);
    buf.write('CHANGED!');
    await written;
    expect(text(await h.read(0, 8))).toBe('original');
  });
});

describe('warnings a peer can cause', () => {
  it('a flood of bad frames and wrong secrets logs a few lines per kind, then one that counts the rest', async () => {
    const lines: Array<{ msg: string; suppressed?: number }> = [];
    const log = pino(
      { level: 'warn' },
      { write: (l: string) => void lines.push(JSON.parse(l) as { msg: string; suppressed?: number }) },
    );
    const secret = 's'.repeat(32);
    const replica = await new StorageReplica({
      id: 'replica-1',
      store: new MemoryStore(),
      transport: new WebSocketTransport(),
      secret,
      env: { log },
    }).start();
    cleanups.push(() => replica.stop());
    for (let c = 0; c < 5; c++) {
      const peer = await raw(replica.url);
      peer.hello(secret, `raw-${c}`);
      expect(await peer.next(1)).toMatchObject({ type: 'welcome' });
      for (let i = 0; i < 50; i++) peer.ws.send('{"type":');
      await peer.next(51);
    }
    for (let c = 0; c < 30; c++) {
      const peer = await raw(replica.url);
      peer.hello('w'.repeat(32), 'intruder');
      await peer.next(1);
    }
    const bad = lines.filter((l) => l.msg === 'bad frame');
    const wrong = lines.filter((l) => l.msg === 'refused a peer: wrong node credential');
    expect(bad.length).toBeGreaterThan(0);
    expect(bad.length).toBeLessThanOrEqual(10);
    expect(wrong.length).toBeGreaterThan(0);
    expect(wrong.length).toBeLessThanOrEqual(10);
  });
});

describe('LogLimiter', () => {
  it('logs the first ones of a window, then says how many it left out', () => {
    let now = 0;
    const clock = { now: () => now, setTimeout: () => 0, clearTimeout: () => undefined };
    const limit = new LogLimiter(clock, 3, 1000);
    const taken = Array.from({ length: 10 }, () => limit.take('bad frame').log);
    expect(taken.filter(Boolean).length).toBe(3);
    expect(limit.take('wrong secret')).toEqual({ log: true, suppressed: 0 });
    now = 1000;
    expect(limit.take('bad frame')).toEqual({ log: true, suppressed: 7 });
  });
});

describe('handles per session', () => {
  it('a resume batch counts against the same limit as opens: past it the batch is refused whole', async () => {
    const secret = 's'.repeat(32);
    const replica = await new StorageReplica({
      id: 'replica-1',
      store: new MemoryStore(),
      transport: new WebSocketTransport(),
      secret,
      maxHandlesPerSession: 10,
    }).start();
    cleanups.push(() => replica.stop());
    const peer = await raw(replica.url);
    peer.hello(secret, 'raw');
    expect(await peer.next(1)).toMatchObject({ type: 'welcome' });
    const items = Array.from({ length: 20 }, (_, i) => ({
      target: `t${i}.disk`,
      requestId: `${'R'.repeat(20)}${String.fromCharCode(65 + i)}`,
      principal: 'p',
      mode: 'read' as const,
      version: 0,
    }));
    peer.ws.send(encode({ type: 'resume', id: 1, items }));
    expect(await peer.next(2)).toMatchObject({ type: 'error', id: 1, code: 'INVALID_ARGUMENT' });
    expect(replica.handles().length).toBe(0);
    peer.ws.send(encode({ type: 'resume', id: 2, items: items.slice(0, 10) }));
    expect(await peer.next(3)).toMatchObject({ type: 'resumed', id: 2 });
    expect(replica.handles().length).toBe(10);
  });
});

describe('close through a session that does not hold the handle', () => {
  it('is answered NOT_OPEN, and the holder keeps its lock', async () => {
    const c = await cluster();
    const h = await new Application(await c.addNode('node-1'), { name: 'app-1' }).open('vm1.disk');
    await h.write(0, bytes('mine'));
    const peer = await raw(c.urls[0]!);
    peer.hello(c.secret, 'raw');
    expect(await peer.next(1)).toMatchObject({ type: 'welcome' });
    peer.ws.send(encode({ type: 'close', id: 1, target: 'vm1.disk', requestId: h.requestId }));
    expect(await peer.next(2)).toMatchObject({ type: 'error', id: 1, code: 'NOT_OPEN' });
    await h.write(4, bytes('!'));
    expect(text(await h.read(0, 5))).toBe('mine!');
  });
});
