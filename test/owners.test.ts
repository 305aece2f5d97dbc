/**
 * Owners and access lists (SPEC "Owner", "Tenants are isolated"), end to end: two tenants on their
 * own nodes, each holding only its own principal's credential, over real WebSockets and replicas.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { issueCredential, SECRET_FILE } from '../actors/auth.js';
import { NodeAgent } from '../actors/node-agent.js';
import { freePort } from '../transport/ports.js';
import { LocalCluster } from '../cluster/local.js';
import { NO_ACCESS } from '../store/rules.js';
import { WebSocketTransport } from '../transport/ws.js';
import { bytes, FAST, tempDir, text, waitForState } from './helpers.js';
import { CLI } from './cli-path.js';

let cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

/** A cluster, and tenants a and b on nodes of their own: neither node holds the cluster key, nor the other's credential. */
async function tenants(opts: { proxied?: boolean } = {}) {
  const t = tempDir();
  const c = await LocalCluster.start({ ...FAST, dir: t.dir, replicas: 1 });
  cleanups.push(t.cleanup, () => c.stop());
  const tenant = async (node: string, principal: string) => {
    const agent = await c.addNode(node, {
      secret: undefined,
      credential: issueCredential(c.secret, 'node', node),
      ...(opts.proxied ? { proxied: true } : {}),
    });
    return new Application(agent, {
      name: `${principal}-app`,
      credential: issueCredential(c.secret, 'principal', principal),
    });
  };
  return { c, a: await tenant('node-a', 'tenant-a'), b: await tenant('node-b', 'tenant-b') };
}

/** What an open ends in: the handle, or the error's code and message. */
const attempt = (app: Application, target: string, mode: 'read' | 'write') =>
  app.open(target, { mode }).then(
    (h) => ({ ok: true as const, h }),
    (e: { code?: string; message?: string }) => ({ ok: false as const, code: e.code, message: e.message }),
  );

describe('tenants are isolated', () => {
  it("b cannot open a's target, in words the same as for any target b may not open; a grants read, then revokes", async () => {
    const { a, b } = await tenants();
    const disk = await a.open('a.disk');
    await disk.write(0, bytes('tenant-a data'));
    const other = await a.open('a-other.disk', { mode: 'read' });
    // b: neither read nor write, on either of a's targets; one answer, naming neither a nor the holder.
    const refusals = [
      await attempt(b, 'a.disk', 'read'),
      await attempt(b, 'a.disk', 'write'),
      await attempt(b, 'a-other.disk', 'read'),
    ];
    for (const r of refusals) expect(r).toEqual({ ok: false, code: 'FORBIDDEN', message: NO_ACCESS });
    expect(NO_ACCESS).not.toMatch(/tenant-a|a\.disk/);
    // b cannot give himself access either.
    await expect(b.grant('a.disk', 'tenant-b', 'write')).rejects.toMatchObject({
      code: 'FORBIDDEN',
      message: NO_ACCESS,
    });
    // a lets b read: b reads a's bytes, and still may not write.
    expect(await a.grant('a.disk', 'tenant-b', 'read')).toEqual({
      owner: 'tenant-a',
      grants: [{ principal: 'tenant-b', mode: 'read' }],
    });
    const reader = await b.open('a.disk', { mode: 'read' });
    expect(text(await reader.read(0, 13))).toBe('tenant-a data');
    expect(await attempt(b, 'a.disk', 'write')).toEqual({ ok: false, code: 'FORBIDDEN', message: NO_ACCESS });
    await reader.close();
    // a revokes: b is refused again.
    expect(await a.revoke('a.disk', 'tenant-b')).toEqual({ owner: 'tenant-a', grants: [] });
    expect(await attempt(b, 'a.disk', 'read')).toEqual({ ok: false, code: 'FORBIDDEN', message: NO_ACCESS });
    // Bad input is refused before it is sent.
    await expect(a.grant('a.disk', 'no spaces', 'read')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(a.grant('a.disk', 'tenant-b', 'admin' as 'read')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(a.grant('a.disk', 'tenant-a', 'read')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    // b's own target is b's: a is refused it.
    const mine = await b.open('b.disk');
    await mine.write(0, bytes('b'));
    expect(await attempt(a, 'b.disk', 'read')).toEqual({ ok: false, code: 'FORBIDDEN', message: NO_ACCESS });
    expect(disk.state).toBe('active');
    await other.close();
  });

  it('a denied holder of another principal is told only that another writer took the target, not who', async () => {
    const { c, a, b } = await tenants({ proxied: true });
    const disk = await a.open('shared.disk');
    await disk.write(0, bytes('a'));
    await a.grant('shared.disk', 'tenant-b', 'write');
    // a's node is cut off; its lock lapses after the hold period; b takes the target and writes.
    c.partition('node-a');
    await waitForState(disk, 'paused');
    const queued = disk.write(1, bytes('A')).then(
      () => undefined,
      (e: Error & { code?: string }) => e,
    );
    let taken: Awaited<ReturnType<typeof attempt>> | undefined;
    for (const deadline = Date.now() + 5000; ; await new Promise((r) => setTimeout(r, 50))) {
      taken = await attempt(b, 'shared.disk', 'write');
      if (taken.ok) break;
      expect(taken).toMatchObject({ code: 'LOCKED', message: 'shared.disk is locked by another writer; retry later' });
      if (Date.now() > deadline) throw new Error("a's lock never lapsed");
    }
    const bh = taken.h;
    await bh.write(0, bytes('B'));
    // a comes back: denied, with nothing of b in what it is told.
    c.heal('node-a');
    await waitForState(disk, 'invalidated');
    expect(disk.reason).toBe('MODIFIED');
    const err = await queued;
    expect(err).toMatchObject({ code: 'MODIFIED' });
    for (const said of [err?.message ?? '', String(disk.reason)]) {
      expect(said).not.toContain('tenant-b');
      expect(said).not.toContain(bh.requestId);
    }
    await bh.close();
  });
});

describe('the operator', () => {
  it('grants and revokes with safe-resume grant and revoke, and explain shows the owner and the list', async () => {
    const t = tempDir();
    const port = await freePort();
    const up: ChildProcess = spawn(
      'node',
      [CLI, 'up', '--dir', t.dir, '--replicas', '1', '--nodes', '1', '--apps', '1', '--port', String(port)],
      { stdio: 'ignore' },
    );
    cleanups.push(t.cleanup, () => void up.kill('SIGKILL'));
    const cli = (...args: string[]) => {
      const r = spawnSync('node', [CLI, ...args, '--dir', t.dir], { encoding: 'utf8', timeout: 60_000 });
      return { code: r.status, out: r.stdout + r.stderr };
    };
    for (const end = Date.now() + 30_000; ; await new Promise((r) => setTimeout(r, 100))) {
      if (
        existsSync(join(t.dir, 'control.json')) &&
        (JSON.parse(cli('status', '--json').out) as { handles: Array<{ state: string }> }).handles[0]?.state ===
          'active'
      )
        break;
      if (Date.now() > end) throw new Error('the cluster never came up');
    }
    // The workload's application (principal default) created app-1.disk: it owns it, alone.
    const before = cli('explain', 'app-1.disk');
    expect(before.out).toContain('\n  owner     default\n  access    the owner only\n');
    // tenant-b, on a node of its own with only its own credentials, may not read it.
    const secret = readFileSync(join(t.dir, SECRET_FILE), 'utf8').trim();
    const tenantB = new NodeAgent({
      id: 'node-b',
      replicas: [`ws://127.0.0.1:${port}`],
      transport: new WebSocketTransport(),
      credential: issueCredential(secret, 'node', 'node-b'),
    });
    cleanups.push(async () => tenantB.crash());
    await tenantB.start();
    const b = new Application(tenantB, { name: 'b', credential: issueCredential(secret, 'principal', 'tenant-b') });
    await expect(b.open('app-1.disk', { mode: 'read' })).rejects.toMatchObject({
      code: 'FORBIDDEN',
      message: NO_ACCESS,
    });
    // The operator lets tenant-b read it: b reads, and still may not write.
    expect(cli('grant', 'app-1.disk', '--principal', 'tenant-b', '--mode', 'read')).toEqual({
      code: 0,
      out: 'app-1.disk: owner default; access: tenant-b read\n',
    });
    expect(cli('explain', 'app-1.disk').out).toContain('\n  owner     default\n  access    tenant-b read\n');
    expect(JSON.parse(cli('explain', 'app-1.disk', '--json').out)).toMatchObject({
      owner: 'default',
      grants: [{ principal: 'tenant-b', mode: 'read' }],
    });
    const reader = await b.open('app-1.disk', { mode: 'read' });
    expect((await reader.read(0, 16)).length).toBeGreaterThan(0);
    await reader.close();
    await expect(b.open('app-1.disk', { mode: 'write' })).rejects.toMatchObject({
      code: 'FORBIDDEN',
      message: NO_ACCESS,
    });
    // Revoked: refused again.
    expect(cli('revoke', 'app-1.disk', '--principal', 'tenant-b')).toEqual({
      code: 0,
      out: 'app-1.disk: owner default; no other principal may open it\n',
    });
    await expect(b.open('app-1.disk', { mode: 'read' })).rejects.toMatchObject({
      code: 'FORBIDDEN',
      message: NO_ACCESS,
    });
    // Bad input: a usage error (exit 2), or a typed refusal (exit 1).
    expect(cli('grant', 'app-1.disk', '--principal', 'tenant-b')).toMatchObject({
      code: 2,
      out: expect.stringContaining('grant needs --mode read or --mode write'),
    });
    expect(cli('grant', 'app-1.disk', '--principal', 'tenant-b', '--mode', 'admin')).toMatchObject({
      code: 2,
      out: expect.stringContaining('not "admin"'),
    });
    expect(cli('revoke', 'app-1.disk')).toMatchObject({
      code: 2,
      out: expect.stringContaining('revoke needs --principal P'),
    });
    expect(cli('grant', 'nobody.disk', '--principal', 'tenant-b', '--mode', 'read')).toMatchObject({
      code: 1,
      out: 'safe-resume grant: INVALID_ARGUMENT: nobody.disk does not exist: nobody has opened it\n',
    });
    expect(cli('grant', 'app-1.disk', '--principal', 'not a name', '--mode', 'read')).toMatchObject({
      code: 1,
      out: expect.stringContaining('INVALID_ARGUMENT: principal "not a name" must be'),
    });
    expect(cli('grant', 'app-1.disk', '--principal', 'default', '--mode', 'read')).toMatchObject({
      code: 1,
      out: expect.stringContaining('default owns app-1.disk'),
    });
    expect(cli('help', 'grant').out).toContain('safe-resume grant <target> --principal P --mode read|write');
  }, 90_000);
});
