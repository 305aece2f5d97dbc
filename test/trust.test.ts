/**
 * The trust model (SPEC "Bad input and trust"): mutual authentication with no secret on the wire,
 * and principals proven by credentials, not claimed in frames. Real WebSockets, real replicas.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { Application } from '../actors/application.js';
import { issueCredential, loadCredential, parseCredential, formatCredential } from '../actors/auth.js';
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { bareLogin } from '../actors/handshake.js';
import { NodeAgent } from '../actors/node-agent.js';
import { LocalCluster } from '../cluster/local.js';
import { decode, encode } from '../transport/codec.js';
import type { Message } from '../transport/messages.js';
import type { Connection } from '../transport/types.js';
import { WebSocketTransport } from '../transport/ws.js';
import { bytes, FAST, tempDir, text, trace, waitFor, waitForState } from './helpers.js';
import { CLI } from './cli-path.js';

let cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function cluster(replicas = 1): Promise<LocalCluster> {
  const t = tempDir();
  const c = await LocalCluster.start({ ...FAST, dir: t.dir, replicas });
  cleanups.push(t.cleanup, () => c.stop());
  return c;
}

/**
 * An impostor on a replica's address: it records every byte it is sent, and answers a hello the way
 * a replica would, as best it can without the cluster key (a welcome at once, or a challenge with a
 * made-up proof).
 */
async function impostor(port: number, style: 'welcome' | 'challenge') {
  const server = new WebSocketServer({ host: '127.0.0.1', port });
  await new Promise((r) => server.once('listening', r));
  const received: Buffer[] = [];
  const types: string[] = [];
  server.on('connection', (ws: WebSocket) => {
    ws.on('message', (data: Buffer) => {
      received.push(Buffer.from(data));
      const d = decode(new Uint8Array(data));
      if (!d.ok) return;
      types.push(d.msg.type);
      const reply = (m: Message) => ws.send(encode(m));
      if (d.msg.type === 'hello') {
        if (style === 'welcome')
          reply({
            type: 'welcome',
            session: 'fake-session',
            replica: 'replica-2',
            heartbeatIntervalMs: 100,
            available: true,
          });
        else reply({ type: 'challenge', replica: 'replica-2', nonce: 'n'.repeat(22), proof: 'A'.repeat(43) });
      }
      // Everything a node asks for is acknowledged: the attack on S3.
      if (d.msg.type === 'open') reply({ type: 'opened', id: d.msg.id, version: 1, lastSeq: 0 });
      if (d.msg.type === 'resume')
        reply({
          type: 'resumed',
          id: d.msg.id,
          results: d.msg.items.map((it) => ({
            target: it.target,
            requestId: it.requestId,
            granted: true,
            lastSeq: 0,
            version: 1,
          })),
        });
      if (d.msg.type === 'write') reply({ type: 'written', id: d.msg.id, seq: d.msg.seq, version: 2 });
      if (d.msg.type === 'ping') reply({ type: 'pong', t: d.msg.t });
    });
  });
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const ws of server.clients) ws.terminate();
        server.close(() => r());
      }),
  );
  return { received, types, all: () => Buffer.concat(received).toString('latin1') };
}

describe('mutual authentication, no secret on the wire', () => {
  it('a node agent sends an impostor neither the cluster key nor its own key, and refuses it: the impostor cannot make it start', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const port = await freeport();
    for (const style of ['welcome', 'challenge'] as const) {
      const fake = await impostor(port, style);
      const secret = 'cluster-key-'.padEnd(43, 'k');
      const credential = issueCredential(secret, 'node', 'node-1');
      const agent = new NodeAgent({
        id: 'node-1',
        replicas: [`ws://127.0.0.1:${port}`],
        transport: new WebSocketTransport(),
        credential,
        principals: [issueCredential(secret, 'principal', 'tenant-a')],
        connectTimeoutMs: 500,
      });
      const started = agent.start().then(
        () => 'started',
        (e: { code?: string }) => e.code,
      );
      const outcome = await Promise.race([started, new Promise((r) => setTimeout(() => r('still trying'), 1500))]);
      agent.crash();
      // The impostor's welcome is not enough, nor is a challenge it cannot prove.
      expect(outcome, style).not.toBe('started');
      if (style === 'challenge') expect(outcome).toBe('AUTH_FAILED');
      expect(fake.types.length, style).toBeGreaterThan(0);
      expect(
        fake.types.filter((x) => x !== 'hello'),
        style,
      ).toEqual([]);
      const wire = fake.all();
      expect(wire).not.toContain(secret);
      expect(wire).not.toContain(credential.key);
      expect(wire).not.toContain(Buffer.from(credential.key, 'base64url').toString('latin1'));
      await cleanups.pop()!();
    }
  });

  it("an impostor on a killed replica's port acknowledges nothing: writes wait and land once a real replica is back (S3)", async () => {
    const c = await cluster(2);
    const agent = await c.addNode('node-1');
    const h = await new Application(agent, { name: 'app-1' }).open('vm1.disk');
    await h.write(0, bytes('before'));
    // The node is served by replica-1; replica-2 dies and an impostor takes its port; then replica-1 dies.
    const serving = c.servingIndex(agent);
    const other = 1 - serving;
    const otherPort = Number(new URL(c.urls[other]!).port);
    await c.kill(other);
    const fake = await impostor(otherPort, 'welcome');
    await c.kill(serving);
    await waitForState(h, 'paused');
    let landed = false;
    const w = h.write(6, bytes('+after')).then(() => (landed = true));
    // Long enough for many attempts on the impostor's port.
    await new Promise((r) => setTimeout(r, 1500));
    expect(landed).toBe(false);
    expect(h.state === 'paused' || h.state === 'resuming').toBe(true);
    expect(fake.types.filter((x) => x !== 'hello')).toEqual([]);
    await c.restart(serving);
    await w;
    expect(text(await h.read(0, 12))).toBe('before+after');
    const store = c.replica(serving).store;
    expect((await store.read({ target: 'vm1.disk', offset: 0, length: 12 })).ok).toBe(true);
  });

  it("a recorded handshake cannot be replayed: the replica's nonce makes every session's proof new", async () => {
    const c = await cluster();
    const transport = new WebSocketTransport();
    const login = bareLogin(
      issueCredential(c.secret, 'node', 'node-1'),
      [issueCredential(c.secret, 'principal', 'p')],
      'nonce-of-the-first-session',
    );
    const first = await session(await transport.connect(c.urls[0]!));
    first.conn.send(login.hello);
    const challenge = await first.next((m) => m.type === 'challenge');
    const auth = login.answer(challenge)!;
    first.conn.send(auth);
    expect(await first.next((m) => m.type === 'welcome' || m.type === 'error')).toMatchObject({ type: 'welcome' });
    // Someone who recorded the hello and the auth plays them back on a new connection.
    const replay = await session(await transport.connect(c.urls[0]!));
    replay.conn.send(login.hello);
    await replay.next((m) => m.type === 'challenge');
    replay.conn.send(auth);
    expect(await replay.next((m) => m.type === 'welcome' || m.type === 'error')).toMatchObject({
      type: 'error',
      code: 'AUTH_FAILED',
    });
    await waitFor('the replay to be closed', () => replay.closed());
  });
});

describe('a relay between a node and a real replica', () => {
  /**
   * A man in the middle with no key: it passes every frame on, except the first write, which it
   * swallows and answers itself with a made-up acknowledgement.
   */
  async function relay(upstream: string) {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((r) => server.once('listening', r));
    let forged = 0;
    server.on('connection', (client: WebSocket) => {
      const up = new WebSocket(upstream);
      const early: Buffer[] = [];
      up.on('open', () => early.splice(0).forEach((b) => up.send(b)));
      up.on('message', (d: Buffer) => client.readyState === client.OPEN && client.send(d));
      up.on('close', () => client.terminate());
      up.on('error', () => client.terminate());
      client.on('close', () => up.terminate());
      client.on('error', () => up.terminate());
      client.on('message', (d: Buffer) => {
        // The header is plain JSON after a 4-byte length: readable, so the relay knows a write.
        let header: { type?: string; id?: number; seq?: number } = {};
        try {
          header = JSON.parse(d.subarray(4, 4 + d.readUInt32BE(0)).toString()) as typeof header;
        } catch {
          /* not a frame it can read */
        }
        if (header.type === 'write' && forged === 0) {
          forged++;
          client.send(encode({ type: 'written', id: header.id ?? 0, seq: header.seq ?? 1, version: 99 }));
          return;
        }
        if (up.readyState === up.OPEN) up.send(d);
        else early.push(d);
      });
    });
    cleanups.push(
      () =>
        new Promise<void>((r) => {
          for (const ws of server.clients) ws.terminate();
          server.close(() => r());
        }),
    );
    const { port } = server.address() as { port: number };
    return { url: `ws://127.0.0.1:${port}`, forged: () => forged };
  }

  it('cannot acknowledge a write: the node drops the session on the first frame it did not seal, and the write lands for real (S3)', async () => {
    const c = await cluster();
    const mitm = await relay(c.urls[0]!);
    const agent = await c.addNode('node-1', { replicas: [mitm.url] });
    const h = await new Application(agent, { name: 'app-1' }).open('vm1.disk');
    await h.write(0, bytes('sealed'));
    expect(mitm.forged()).toBe(1);
    // Resolved only once the replica applied it: the store has the bytes.
    const stored = await c.replica(0).store.read({ target: 'vm1.disk', offset: 0, length: 6 });
    expect(stored.ok && text(stored.data)).toBe('sealed');
  });
});

describe('principals are proven, not claimed', () => {
  /** A second node that holds only its own credential and tenant-b's: the attacker of the review. */
  async function setup() {
    const c = await cluster();
    const victimAgent = await c.addNode('node-1', {
      secret: undefined,
      credential: issueCredential(c.secret, 'node', 'node-1'),
    });
    const victim = await new Application(victimAgent, {
      name: 'vm',
      credential: issueCredential(c.secret, 'principal', 'tenant-a'),
    }).open('victim.disk');
    await victim.write(0, bytes('tenant-a data'));
    return { c, victim };
  }

  it('an application cannot name a principal its node holds no credential for', async () => {
    const { c } = await setup();
    const agent = await c.addNode('node-2', {
      secret: undefined,
      credential: issueCredential(c.secret, 'node', 'node-2'),
    });
    expect(() => new Application(agent, { name: 'x', principal: 'tenant-a' })).toThrow(
      expect.objectContaining({ code: 'FORBIDDEN' }),
    );
    // Its own principal works.
    const mine = await new Application(agent, {
      name: 'x',
      credential: issueCredential(c.secret, 'principal', 'tenant-b'),
    }).open('mine.disk');
    await mine.write(0, bytes('b'));
    expect(text(await mine.read(0, 1))).toBe('b');
  });

  /** A session of node-2 proving only tenant-b, as an attacker holding its own credentials opens one. */
  async function tenantB(c: { urls: string[]; secret: string }) {
    const peer = await session(await new WebSocketTransport().connect(c.urls[0]!));
    const login = bareLogin(
      issueCredential(c.secret, 'node', 'node-2'),
      [issueCredential(c.secret, 'principal', 'tenant-b')],
      'nonce-of-the-attacker-node',
    );
    peer.conn.send(login.hello);
    peer.conn.send(login.answer(await peer.next((m) => m.type === 'challenge'))!);
    await peer.next((m) => m.type === 'welcome');
    return { peer, answer: (id: number) => peer.next((m) => 'id' in m && m.id === id) };
  }

  it('a peer with a node credential cannot open, read, resume or take over a handle of a principal it did not prove', async () => {
    const { c, victim } = await setup();
    const { peer, answer } = await tenantB(c);
    // Read the victim's target as tenant-a.
    peer.conn.send({
      type: 'open',
      id: 1,
      target: 'victim.disk',
      requestId: 'R'.repeat(21),
      principal: 'tenant-a',
      mode: 'read',
    });
    expect(await answer(1)).toMatchObject({ type: 'error', code: 'FORBIDDEN' });
    // Take the victim's requestId over for write, claiming its principal.
    peer.conn.send({
      type: 'open',
      id: 2,
      target: 'victim.disk',
      requestId: victim.requestId,
      principal: 'tenant-a',
      mode: 'write',
    });
    expect(await answer(2)).toMatchObject({ type: 'error', code: 'FORBIDDEN' });
    peer.conn.send({
      type: 'resume',
      id: 3,
      items: [
        {
          target: 'victim.disk',
          requestId: victim.requestId,
          principal: 'tenant-a',
          mode: 'write',
          instance: 'attacker-instance',
          takeover: true,
        },
      ],
    });
    expect(await answer(3)).toMatchObject({
      type: 'resumed',
      results: [{ granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN' }],
    });
    // Nothing it tried took hold: no write of its lands, the victim stays active and keeps writing.
    peer.conn.send({
      type: 'write',
      id: 4,
      target: 'victim.disk',
      requestId: victim.requestId,
      seq: 2,
      offset: 0,
      data: bytes('MALLORY'),
    });
    expect(await answer(4)).toMatchObject({ type: 'error', code: 'NOT_OPEN' });
    peer.conn.send({ type: 'close', id: 5, target: 'victim.disk', requestId: victim.requestId });
    expect(await answer(5)).toMatchObject({ type: 'error', code: 'NOT_OPEN' });
    expect(victim.state).toBe('active');
    await victim.write(13, bytes('!'));
    expect(text(await victim.read(0, 14))).toBe('tenant-a data!');
  });

  it("a requestId learned by another principal cannot be opened once that principal took the target: the victim's writes are settled by what was applied (S5, L1)", async () => {
    const c = await cluster();
    const victimAgent = await c.addNode('node-1', {
      proxied: true,
      secret: undefined,
      credential: issueCredential(c.secret, 'node', 'node-1'),
    });
    const victimApp = new Application(victimAgent, {
      name: 'vm',
      credential: issueCredential(c.secret, 'principal', 'tenant-a'),
    });
    const victim = await victimApp.open('victim.disk');
    await victim.write(0, bytes('tenant-a data'));
    // tenant-a lets tenant-b write the target too (a tenant without access is refused before it could learn anything).
    await victimApp.grant('victim.disk', 'tenant-b', 'write');
    const store = c.replica(0).store;
    // A write reaches the store and is applied, but its answer is lost; then the node is cut off.
    c.link('node-1', 0).dropReplies();
    const sent = victim.write(13, bytes('!')).then(
      () => 'resolved',
      (e: { code?: string }) => e.code,
    );
    for (
      const deadline = Date.now() + 5000;
      (await store.record('victim.disk'))?.lastSeq !== 2;
      await new Promise((r) => setTimeout(r, 10))
    ) {
      if (Date.now() > deadline) throw new Error('the write never reached the store');
    }
    c.partition('node-1');
    await waitForState(victim, 'paused');
    const queued = victim.write(14, bytes('?')).then(
      () => 'resolved',
      (e: { code?: string }) => e.code,
    );
    // tenant-b waits for the victim's lock to lapse, takes the target with a requestId of its own, and closes.
    const { peer, answer } = await tenantB(c);
    let id = 0;
    for (const deadline = Date.now() + 5000; ; await new Promise((r) => setTimeout(r, 50))) {
      peer.conn.send({
        type: 'open',
        id: ++id,
        target: 'victim.disk',
        requestId: 'B'.repeat(21),
        principal: 'tenant-b',
        mode: 'write',
      });
      const got = await answer(id);
      if (got.type === 'opened') break;
      expect(got).toMatchObject({ type: 'error', code: 'LOCKED' });
      if (Date.now() > deadline) throw new Error("the victim's lock never lapsed");
    }
    peer.conn.send({ type: 'close', id: ++id, target: 'victim.disk', requestId: 'B'.repeat(21) });
    expect(await answer(id)).toMatchObject({ type: 'closed' });
    // Then it opens the target naming the victim's requestId, as its own principal.
    peer.conn.send({
      type: 'open',
      id: ++id,
      target: 'victim.disk',
      requestId: victim.requestId,
      principal: 'tenant-b',
      mode: 'write',
    });
    expect(await answer(id)).toMatchObject({ type: 'error', code: 'FORBIDDEN' });
    // The victim comes back: denied MODIFIED (the target was taken), the applied write resolves, the queued one was never applied.
    c.heal('node-1');
    await waitForState(victim, 'invalidated');
    expect(victim.reason).toBe('MODIFIED');
    expect(await sent).toBe('resolved');
    expect(await queued).toBe('MODIFIED');
    const r = await store.read({ target: 'victim.disk', offset: 0, length: 16 });
    expect(r.ok && text(r.data)).toBe('tenant-a data!');
  });

  it('a principal proof that is wrong is refused; opens naming that principal stay FORBIDDEN', async () => {
    const { c } = await setup();
    const peer = await session(await new WebSocketTransport().connect(c.urls[0]!));
    const login = bareLogin(issueCredential(c.secret, 'node', 'node-2'), [], 'nonce-of-the-attacker-node');
    peer.conn.send(login.hello);
    peer.conn.send(login.answer(await peer.next((m) => m.type === 'challenge'))!);
    await peer.next((m) => m.type === 'welcome');
    // A proof made with a key that is not tenant-a's.
    peer.conn.send({ type: 'prove', principal: 'tenant-a', proof: Buffer.alloc(32, 7).toString('base64url') });
    expect(await peer.next((m) => m.type === 'error')).toMatchObject({ code: 'AUTH_FAILED' });
    peer.conn.send({
      type: 'open',
      id: 1,
      target: 'victim.disk',
      requestId: 'R'.repeat(21),
      principal: 'tenant-a',
      mode: 'read',
    });
    expect(await peer.next((m) => 'id' in m && m.id === 1)).toMatchObject({ type: 'error', code: 'FORBIDDEN' });
  });

  it('a node speaking for more principals than one auth carries proves the rest on the session, also after a reconnect', async () => {
    const c = await cluster();
    const principals = Array.from({ length: 20 }, (_, i) => issueCredential(c.secret, 'principal', `tenant-${i}`));
    const agent = await c.addNode('node-1', {
      proxied: true,
      secret: undefined,
      credential: issueCredential(c.secret, 'node', 'node-1'),
      principals,
    });
    const last = await new Application(agent, { name: 'vm', principal: 'tenant-19' }).open('t19.disk');
    await last.write(0, bytes('19'));
    const seen = trace(last);
    c.dropLinks('node-1');
    await waitFor('the handle to pause and be active again', () => seen.includes('paused') && last.state === 'active');
    const again = await new Application(agent, { name: 'vm2', principal: 'tenant-18' }).open('t18.disk');
    await again.write(0, bytes('18'));
    expect(text(await last.read(0, 2))).toBe('19');
  });

  it('one principal credential the storage refuses costs only that principal: the node and its other applications go on, across reconnects', async () => {
    const c = await cluster();
    const agent = await c.addNode('node-1', {
      proxied: true,
      secret: undefined,
      credential: issueCredential(c.secret, 'node', 'node-1'),
    });
    const good = await new Application(agent, {
      name: 'good',
      credential: issueCredential(c.secret, 'principal', 'tenant-b'),
    }).open('b.disk');
    await good.write(0, bytes('b'));
    // A stale credential of tenant-a: from another cluster's key.
    const stale = new Application(agent, {
      name: 'stale',
      credential: issueCredential('another-cluster-key-another-cluster-key', 'principal', 'tenant-a'),
    });
    await expect(stale.open('a.disk')).rejects.toMatchObject({ code: 'FORBIDDEN' });
    const seen = trace(good);
    c.dropLinks('node-1');
    await waitFor('the handle to pause and be active again', () => seen.includes('paused') && good.state === 'active');
    expect(agent.state).toBe('connected');
    await good.write(1, bytes('!'));
    expect(text(await good.read(0, 2))).toBe('b!');
    await expect(stale.open('a.disk')).rejects.toMatchObject({ code: 'FORBIDDEN' });
  });

  it('a node refuses a credential issued to another node, and a credential file is validated with a clear error', async () => {
    const secret = 'k'.repeat(43);
    const other = issueCredential(secret, 'node', 'node-2');
    expect(
      () =>
        new NodeAgent({
          id: 'node-1',
          replicas: ['ws://127.0.0.1:1'],
          transport: new WebSocketTransport(),
          credential: other,
        }),
    ).toThrow(/credential of "node-2"/);
    expect(parseCredential(formatCredential(other))).toEqual(other);
    expect(() => parseCredential('{"v":1,"kind":"node","name":"n","key":"short"}', 'creds.json')).toThrow(
      /creds.json: key: key must be 32 bytes/,
    );
    expect(() => parseCredential('not json', 'creds.json')).toThrow(/creds.json: not a safe-resume credential/);
    expect(() => issueCredential(secret, 'principal', 'has space')).toThrow(/principal name/);
  });
});

describe('safe-resume credentials issue', () => {
  const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

  it("issues credentials from the cluster key that a node and an application use as they are; another cluster's are refused", async () => {
    const c = await cluster();
    const dir = c.opts.dir;
    const node = cli(['credentials', 'issue', '--node', 'node-9', '--dir', dir, '--out', join(dir, 'node-9.cred')]);
    expect(node.status, node.stderr).toBe(0);
    const tenant = cli(['credentials', 'issue', '--principal', 'tenant-a', '--dir', dir]);
    expect(tenant.status, tenant.stderr).toBe(0);
    expect(statSync(join(dir, 'node-9.cred')).mode & 0o777).toBe(0o600);
    const agent = await c.addNode('node-9', {
      secret: undefined,
      credential: loadCredential(join(dir, 'node-9.cred')),
    });
    const h = await new Application(agent, { name: 'vm', credential: parseCredential(tenant.stdout) }).open('t.disk');
    await h.write(0, bytes('ok'));
    expect(text(await h.read(0, 2))).toBe('ok');
    // The same names issued from another cluster's key prove nothing here.
    const other = tempDir();
    cleanups.push(other.cleanup);
    const foreign = cli(['credentials', 'issue', '--node', 'node-8', '--dir', other.dir]);
    expect(foreign.stderr).toContain('created a new cluster key');
    const stranger = new NodeAgent({
      id: 'node-8',
      replicas: c.urls,
      transport: new WebSocketTransport(),
      credential: parseCredential(foreign.stdout),
    });
    cleanups.push(() => stranger.crash());
    await expect(stranger.start()).rejects.toMatchObject({ code: 'AUTH_FAILED' });
  });

  it('refuses bad input with a usage error (exit 2) and never replaces a file without --force', () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    expect(cli(['credentials', 'issue', '--dir', t.dir]).status).toBe(2);
    expect(cli(['credentials', 'issue', '--node', 'a', '--principal', 'b', '--dir', t.dir]).status).toBe(2);
    const bad = cli(['credentials', 'issue', '--node', 'no spaces', '--dir', t.dir]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('names are 1-128');
    const out = join(t.dir, 'x.cred');
    expect(cli(['credentials', 'issue', '--node', 'n1', '--dir', t.dir, '--out', out]).status).toBe(0);
    const before = readFileSync(out, 'utf8');
    const again = cli(['credentials', 'issue', '--node', 'n2', '--dir', t.dir, '--out', out]);
    expect(again.status).toBe(2);
    expect(readFileSync(out, 'utf8')).toBe(before);
    expect(cli(['credentials', 'issue', '--node', 'n2', '--dir', t.dir, '--out', out, '--force']).status).toBe(0);
    expect(parseCredential(readFileSync(out, 'utf8')).name).toBe('n2');
  });
});

/** A bare connection: frames collected, and a wait for the first one that matches. */
async function session(conn: Connection) {
  const got: Message[] = [];
  let closed = false;
  conn.onFrame((f) => void (f.ok && got.push(f.msg)));
  conn.onClose(() => (closed = true));
  cleanups.push(() => conn.terminate());
  const next = async (match: (m: Message) => boolean): Promise<Message> => {
    let found: Message | undefined;
    await waitFor('a matching frame', () => (found = got.find(match)) !== undefined, 5000);
    got.splice(got.indexOf(found!), 1);
    return found!;
  };
  return { conn, next, closed: () => closed };
}

async function freeport(): Promise<number> {
  const { freePort } = await import('../transport/ports.js');
  return freePort();
}
