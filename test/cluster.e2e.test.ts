/**
 * End to end: `safe-resume up` starts real processes (replicas, node agents with workloads) over
 * SQLite; the CLI breaks them; every handle must heal safely, and nothing may be left running.
 */
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { connect as tlsConnect } from 'node:tls';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { SECRET_FILE } from '../actors/auth.js';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RECORD_BYTES } from '../cluster/workload.js';
import { targetUrl } from '../frontends/nbd.js';
import { tempDir } from './helpers.js';
import { raw, upgrade } from './http-client.js';
import { CLI } from './cli-path.js';
import { until as poll } from './e2e.js';

const t = tempDir();
const dir = join(t.dir, 'cluster');
let launcher: ChildProcess | undefined;

interface Status {
  replicas: Array<{ id: string; state: string; pid: number | null; metrics: string | null }>;
  nodes: Array<{ id: string; state: string; pid: number | null; replica: string | null; metrics: string | null }>;
  handles: Array<{
    node: string;
    app: string;
    target: string;
    state: string;
    reason: string | null;
    acked: number;
    requestId: string | null;
  }>;
}

function cli(...args: string[]): { code: number; out: string } {
  try {
    return { code: 0, out: execFileSync('node', [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 30_000 }) };
  } catch (err) {
    const e = err as { status?: number; stdout?: string; stderr?: string };
    return { code: e.status ?? 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

const status = (): Status => JSON.parse(cli('status', '--json').out) as Status;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `until` (test/e2e.ts), its timeout naming the first cluster's status and what its up said on stderr. */
const until = (what: string, check: () => boolean, ms = 30_000): Promise<void> =>
  poll(what, check, ms, {
    everyMs: 200,
    detail: () => `: ${JSON.stringify(status())}; the first up said on stderr: ${printedErr.get(dir) ?? ''}`,
  });

function alive(pid: number | null): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** /healthz's status code, fetched synchronously for `until` (curl is not needed: a child node does it). */
function sampleHealth(url: string): number {
  const out = execFileSync(
    'node',
    ['-e', `fetch(${JSON.stringify(url + '/healthz')}).then((r) => console.log(r.status), () => console.log(0))`],
    { encoding: 'utf8' },
  );
  return Number(out.trim());
}

/** The first lines each `up` printed (its addresses), by data directory. */
const printed = new Map<string, string>();
/** And what it said on stderr. */
const printedErr = new Map<string, string>();

function startCluster(d = dir, extra: string[] = []): ChildProcess {
  const p = spawn('node', [CLI, 'up', '--dir', d, '--hold-ms', '1000', '--interval-ms', '50', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  printed.set(d, '');
  p.stdout?.on('data', (b: Buffer) => {
    const so = printed.get(d)!;
    if (so.length < 65_536) printed.set(d, so + b.toString());
  });
  printedErr.set(d, '');
  p.stderr?.on('data', (b: Buffer) => {
    const so = printedErr.get(d)!;
    if (so.length < 65_536) printedErr.set(d, so + b.toString());
  });
  return p;
}

/** The address `up` printed for `what` (inspector, stately, ...). */
function printedUrl(d: string, what: string): string {
  const m = new RegExp(`^  ${what} +(http\\S+)`, 'm').exec(printed.get(d) ?? '');
  if (!m) throw new Error(`up printed no ${what} address: ${printed.get(d)}`);
  return m[1]!;
}

/** What the CLI reads to reach the running cluster. */
const controlFile = (d = dir) =>
  JSON.parse(readFileSync(join(d, 'control.json'), 'utf8')) as { url: string; token: string };

/** Every record up to `count` is intact: its sequence number and checksum are right. */
function intactRecords(text: string, count: number): number {
  let ok = 0;
  for (let seq = 0; seq < count; seq++) {
    const rec = text.slice(seq * RECORD_BYTES, (seq + 1) * RECORD_BYTES);
    const m = /^(\S+) (\d+) ([0-9a-f]{16})\.*\n$/.exec(rec);
    if (!m || Number(m[2]) !== seq) continue;
    if (createHash('sha256').update(`${m[1]} ${m[2]} `).digest('hex').slice(0, 16) === m[3]) ok++;
  }
  return ok;
}

afterAll(() => {
  if (launcher && launcher.exitCode === null) launcher.kill('SIGKILL');
  t.cleanup();
});

describe('safe-resume up: a real local cluster', () => {
  it('comes up with 3 replicas and 2 nodes of 2 applications, all writing', async () => {
    launcher = startCluster();
    await until('the control endpoint', () => existsSync(join(dir, 'control.json')));
    await until('every handle active and writing', () => {
      const s = status();
      return s.handles.length === 4 && s.handles.every((h) => h.state === 'active' && h.acked > 3);
    });
    const s = status();
    expect(s.replicas.map((r) => r.id)).toEqual(['replica-1', 'replica-2', 'replica-3']);
    expect(s.nodes.map((n) => n.id)).toEqual(['node-1', 'node-2']);
    expect(s.handles.map((h) => `${h.node}/${h.app}`)).toEqual([
      'node-1/app-1',
      'node-1/app-2',
      'node-2/app-3',
      'node-2/app-4',
    ]);
  }, 60_000);

  it('prints an NBD URL per node (its Unix socket); qemu-io writes a disk through it, and the CLI reads the same bytes', async () => {
    const nbdLines = () => [
      ...(printed.get(dir) ?? '').matchAll(/^ {2}nbd +(nbd\+unix:\/\/\/\?socket=\S+) +\((node-\d)/gm),
    ];
    // What up printed reaches this process when its event loop is free (it is blocked in each CLI call).
    await until('the NBD lines of up', () => nbdLines().length >= 2).catch(() => undefined);
    const urls = nbdLines().map((m) => ({ url: m[1]!, node: m[2]! }));
    expect(
      urls.map((u) => u.node),
      `up printed:\n${printed.get(dir)}\nand on stderr:\n${printedErr.get(dir)}`,
    ).toEqual(['node-1', 'node-2']);
    const io = spawnSync(
      'qemu-io',
      ['-f', 'raw', '-c', 'write -P 0x61 0 4k', '-c', 'read -P 0x61 0 4k', targetUrl(urls[0]!.url, 'disk-e2e')],
      { encoding: 'utf8', timeout: 30_000 },
    );
    expect(io.stdout).toMatch(/wrote 4096\/4096 bytes[\s\S]*read 4096\/4096 bytes/);
    expect(io.stdout).not.toMatch(/verification failed/);
    const read = execFileSync('node', [CLI, 'read', 'disk-e2e', '--dir', dir], { encoding: 'utf8' });
    expect(read).toContain('a'.repeat(64));
    expect(status().nodes.find((n) => n.id === 'node-1')).toMatchObject({ nbd: { url: urls[0]!.url } });
    expect(
      execFileSync('node', [CLI, 'export', 'vm 1.disk', '--node', 'node-2', '--dir', dir], { encoding: 'utf8' }).trim(),
    ).toBe(urls[1]!.url.replace('///?', '///vm%201.disk?'));
    const unknown = spawnSync('node', [CLI, 'export', 'x', '--node', 'node-9', '--dir', dir], { encoding: 'utf8' });
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('no node called "node-9"');
  }, 60_000);

  it('create --size 4G makes a sparse disk: nbdinfo reports its size, qemu-io writes its last block, the store stays small', async () => {
    const created = cli('create', 'big.disk', '--size', '4G');
    expect(created.code, created.out).toBe(0);
    const url = /^(nbd\+unix:\/\/\/big\.disk\?socket=\S+)$/m.exec(created.out)?.[1];
    expect(created.out).toContain('big.disk: 4 GiB (4294967296 bytes)');
    expect(url, created.out).toBeDefined();
    expect(spawnSync('nbdinfo', ['--size', url!], { encoding: 'utf8' }).stdout.trim()).toBe(String(4 * 1024 ** 3));
    const io = spawnSync(
      'qemu-io',
      [
        '-f',
        'raw',
        '-c',
        'write -P 0x5a 4194300k 4k',
        '-c',
        'read -P 0x5a 4194300k 4k',
        '-c',
        'read -P 0 2G 64k',
        url!,
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    expect(io.stdout).toMatch(/wrote 4096\/4096 bytes[\s\S]*read 4096\/4096 bytes[\s\S]*read 65536\/65536 bytes/);
    expect(io.stdout + io.stderr).not.toMatch(/verification failed|error/i);
    const past = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write 4G 4k', url!], { encoding: 'utf8', timeout: 30_000 });
    expect(past.stdout + past.stderr).toMatch(/error|Input\/output|Invalid argument|No space/i);
    // Sparse: a 4 GiB disk with one block written costs about that block.
    const onDisk = ['store.sqlite', 'store.sqlite-wal'].reduce(
      (n, f) => n + (existsSync(join(dir, f)) ? lstatSync(join(dir, f)).size : 0),
      0,
    );
    expect(onDisk).toBeLessThan(64 * 1024 * 1024);
    // Again with the same size: nothing to do; with another: refused, the disk unchanged.
    expect(cli('create', 'big.disk', '--size', '4096M').out).toContain('as it already was');
    const other = cli('create', 'big.disk', '--size', '8G');
    expect(other.code).toBe(1);
    expect(other.out).toContain('was created with a size of 4294967296 bytes, not 8589934592');
    const bad = cli('create', 'x.disk', '--size', '4Q');
    expect([bad.code, bad.out]).toEqual([2, expect.stringContaining('give bytes or a number with K, M, G or T')]);
  }, 60_000);

  it('no child process carries the cluster secret in its command line or environment (other local users read those)', () => {
    const secret = readFileSync(join(dir, SECRET_FILE), 'utf8').trim();
    const s = status();
    const pids = [...s.replicas, ...s.nodes].map((c) => c.pid).filter((p): p is number => p !== null);
    expect(pids.length).toBe(5);
    for (const pid of pids) {
      expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), `pid ${pid} command line`).not.toContain(secret);
      expect(readFileSync(`/proc/${pid}/environ`, 'utf8'), `pid ${pid} environment`).not.toContain(secret);
    }
  });

  it('the data directory and everything in it is private to its owner (directories 0700, files 0600)', () => {
    const open: string[] = [];
    const walk = (p: string) => {
      const st = lstatSync(p);
      if ((st.mode & 0o077) !== 0) open.push(`${p} ${(st.mode & 0o777).toString(8)}`);
      if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n));
    };
    walk(dir);
    const names = readdirSync(dir);
    expect(names).toEqual(expect.arrayContaining(['store.sqlite', 'control.json', SECRET_FILE, 'logs']));
    expect(open).toEqual([]);
  });

  it('the control plane is locked: no request without the token (401), from a foreign Origin or under a foreign Host (403); the CLI works', async () => {
    const { url, token } = controlFile();
    const port = new URL(url).port;
    const auth = { authorization: `Bearer ${token}` };
    // The review's cross-site POST (a page the user visits can send it): refused, with or without the
    // token; only the CLI talks to this endpoint, and it sends no Origin.
    const kill = { method: 'POST', body: JSON.stringify({ id: 'replica-3' }) };
    const forged = { origin: 'http://evil.example', 'content-type': 'text/plain' };
    for (const headers of [
      forged,
      { ...forged, ...auth },
      { ...forged, origin: `http://127.0.0.1:${port}`, ...auth },
    ]) {
      const r = await raw(`${url}/kill`, { ...kill, headers });
      expect(r.status, JSON.stringify(headers)).toBe(403);
      expect(JSON.parse(r.body)).toMatchObject({ ok: false, code: 'FORBIDDEN' });
    }
    for (const headers of [{}, { authorization: 'Bearer wrong' }] as Array<Record<string, string>>) {
      for (const [path, opts] of [
        ['/kill', kill],
        ['/status', {}],
      ] as const) {
        const r = await raw(url + path, { ...opts, headers });
        expect(r.status, path).toBe(401);
        expect(JSON.parse(r.body)).toMatchObject({ ok: false, code: 'AUTH_FAILED' });
      }
    }
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/); // 32 random bytes, in the 0600 control.json
    // DNS rebinding: a foreign name for 127.0.0.1.
    const rebound = await raw(`${url}/status`, { headers: { host: `evil.example:${port}`, ...auth } });
    expect(rebound.status).toBe(403);
    expect(JSON.parse(rebound.body)).toMatchObject({ ok: false, code: 'FORBIDDEN' });
    expect((await raw(`${url}/status`, { headers: auth })).status).toBe(200);

    // The inspector: its page URL carries the token; nothing that shows or changes state works without it.
    const page = printedUrl(dir, 'inspector');
    expect(page).toMatch(new RegExp(`^http://127\\.0\\.0\\.1:\\d+/#token=${token}$`));
    const insp = new URL(page).origin;
    expect((await raw(`${insp}/`)).status).toBe(200);
    expect((await raw(`${insp}/api/status`)).status).toBe(401);
    expect((await raw(`${insp}/api/kill`, kill)).status).toBe(401);
    expect((await raw(`${insp}/api/kill`, { ...kill, headers: { ...forged, ...auth } })).status).toBe(403);
    expect((await raw(`${insp}/api/status`, { headers: { host: 'evil.example', ...auth } })).status).toBe(403);
    expect((await raw(`${insp}/api/status`, { headers: auth })).status).toBe(200);
    const ws = insp.replace('http', 'ws');
    expect((await upgrade(`${ws}/stream`)).status).toBe(401);
    expect((await upgrade(`${ws}/stream?token=${token}`, { origin: 'http://evil.example' })).status).toBe(403);
    // /inspect takes only the cluster's own processes: not a stranger, not the control token; the
    // processes themselves got in (with the credential of their own name, over IPC).
    for (const headers of [{}, auth])
      expect((await upgrade(`${ws}/inspect?from=replica-1`, { headers })).status).toBe(401);
    const watch = await upgrade(`${ws}/stream?token=${token}`);
    expect(watch.status).toBe(101);
    // (A replica that serves no node has no actors to show.)
    const serving = status().nodes.map((n) => n.replica!);
    await until(
      'the nodes and their replica in the inspector',
      () => ['node-1', 'node-2', ...serving].every((p) => watch.seen.events.some((e) => e.process === p)),
      10_000,
    );
    watch.ws!.close();

    // Nothing was killed, and the CLI (which reads the token from control.json) works.
    expect(status().replicas.map((r) => r.state)).toEqual(['serving', 'serving', 'serving']);
    const st = cli('status');
    expect(st.code).toBe(0);
    expect(st.out).toMatch(/^replica-3 +serving/m);
  });

  it('the control endpoint refuses a body over 64 KiB with 413, kills nothing, and the cluster goes on', async () => {
    const { url, token } = controlFile();
    const r = await fetch(`${url}/kill`, {
      method: 'POST',
      body: JSON.stringify({ id: 'replica-1', pad: 'x'.repeat(200 * 1024) }),
      headers: { authorization: `Bearer ${token}` },
    });
    expect(r.status).toBe(413);
    const s = status();
    expect(s.replicas.every((x) => x.state !== 'down')).toBe(true);
  });

  it('kill a replica: every handle ends active again and writes continue', async () => {
    const serving = status().nodes[0]!.replica!;
    const servedNodes = status()
      .nodes.filter((n) => n.replica === serving)
      .map((n) => n.id);
    const before = Object.fromEntries(status().handles.map((h) => [h.app, h.acked]));
    expect(cli('kill', serving).code).toBe(0);
    await until('the killed replica down', () => status().replicas.find((r) => r.id === serving)!.state === 'down');
    await until('every handle active with more writes', () =>
      status().handles.every((h) => h.state === 'active' && h.acked > before[h.app]! + 5),
    );
    expect(status().nodes.every((n) => n.replica !== serving)).toBe(true);
    // The timeline tells each handle's pause and resume, however short (a failover here takes tens of
    // milliseconds, shorter than the nodes' status reports): paused, then active again, same requestId.
    type Ev = {
      kind: string;
      at: number;
      what?: string;
      app?: string;
      to?: string;
      requestId?: string | null;
      detail?: string;
    };
    const events = (JSON.parse(cli('events', '--json').out) as { events: Ev[] }).events;
    const killedAt = events.filter((e) => e.kind === 'fault' && e.what === `kill ${serving}`).at(-1)!.at;
    for (const h of status().handles.filter((h) => servedNodes.includes(h.node))) {
      const story = events.filter((e) => e.kind === 'handle' && e.app === h.app && e.at >= killedAt);
      expect(
        story.map((e) => e.to),
        `${h.app}: ${JSON.stringify(story)}`,
      ).toContain('paused');
      const back = story.find((e) => e.to === 'active');
      expect(back?.detail, `${h.app}: ${JSON.stringify(story)}`).toBe('resume granted, same requestId');
      expect(back?.requestId).toBe(h.requestId);
    }
    expect(cli('restart', serving).code).toBe(0);
  }, 60_000);

  it('every replica and node serves /metrics (Prometheus text) and /healthz on 127.0.0.1; the failover shows in them', async () => {
    const st = status();
    const get = async (url: string) => {
      const res = await fetch(url);
      return { status: res.status, text: await res.text() };
    };
    /** The value of one sample line, or undefined. */
    const sample = (text: string, line: string) => {
      const m = new RegExp(`^${line.replace(/[{}"=]/g, (c) => `\\${c}`)} (\\S+)$`, 'm').exec(text);
      return m ? Number(m[1]) : undefined;
    };
    for (const p of [...st.replicas, ...st.nodes]) {
      expect(p.metrics, p.id).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect((await get(`${p.metrics}/healthz`)).status, p.id).toBe(200);
    }
    // The node paused and resumed its handles when its replica was killed (the test before this one).
    const node = await get(`${st.nodes[0]!.metrics}/metrics`);
    expect(sample(node.text, 'safe_resume_handle_transitions_total{to="paused",reason=""}')).toBeGreaterThan(0);
    expect(sample(node.text, 'safe_resume_session_connected')).toBe(1);
    expect(sample(node.text, 'safe_resume_handles{state="active"}')).toBe(2);
    expect(node.text).toMatch(/^safe_resume_operation_seconds_bucket\{le="0.005",kind="write",outcome="ok"\} \d+$/m);
    // The replica serving it now granted those resumes, and answers writes and store transactions.
    const serving = st.replicas.find((r) => r.id === st.nodes[0]!.replica)!;
    const replica = await get(`${serving.metrics}/metrics`);
    expect(sample(replica.text, 'safe_resume_resumes_total{outcome="granted"}')).toBeGreaterThan(0);
    expect(sample(replica.text, 'safe_resume_sessions')).toBeGreaterThan(0);
    expect(sample(replica.text, 'safe_resume_request_seconds_count{type="write"}')).toBeGreaterThan(0);
    expect(sample(replica.text, 'safe_resume_store_transaction_seconds_count')).toBeGreaterThan(0);
    // A dismounted replica says so on /healthz; a foreign Host is refused.
    const other = st.replicas.find((r) => r.id !== serving.id)!;
    expect(cli('dismount', other.id, '--for', '2').code).toBe(0);
    await until('the dismounted replica unhealthy', () => sampleHealth(other.metrics!) === 503, 10_000);
    expect((await raw(`${other.metrics}/metrics`, { headers: { host: 'evil.example' } })).status).toBe(403);
    await until('the replica mounted again', () => sampleHealth(other.metrics!) === 200, 10_000);
  }, 60_000);

  it('partition a node past its hold period, write as a foreign writer, heal: that handle is invalidated MODIFIED, the other resumes', async () => {
    expect(cli('partition', 'node-1').code).toBe(0);
    await until('node-1 handles paused', () =>
      status()
        .handles.filter((h) => h.node === 'node-1')
        .every((h) => h.state === 'paused'),
    );
    // The replicas notice the silence (3 heartbeats), then the 1 s hold runs out: retry until the lock is free.
    let wrote = { code: 1, out: '' };
    const end = Date.now() + 30_000;
    while (wrote.code !== 0 && Date.now() < end) {
      wrote = cli('write', 'app-1.disk', 'FOREIGN DATA', '--as', 'intruder');
      if (wrote.code !== 0) {
        expect(wrote.out).toMatch(/LOCKED/);
        await sleep(500);
      }
    }
    expect(wrote.code).toBe(0);
    expect(cli('heal', 'node-1').code).toBe(0);
    await until('app-1 invalidated and app-2 active', () => {
      const hs = status().handles;
      return (
        hs.find((h) => h.app === 'app-1')!.state === 'invalidated' &&
        hs.find((h) => h.app === 'app-2')!.state === 'active'
      );
    });
    const app1 = status().handles.find((h) => h.app === 'app-1')!;
    expect(app1.reason).toBe('MODIFIED');
    expect(cli('read', 'app-1.disk').out.startsWith('FOREIGN DATA')).toBe(true);
    // Who took the target over, and when: the store keeps it with the lapsed holder's tombstone, so the
    // timeline and explain say it after the foreign writer has closed (nobody holds the target now).
    const foreign = /\(requestId (\S+), version \d+\)/.exec(wrote.out)![1]!;
    const tookOver = `requestId ${foreign} \\(principal default\\) took the target over at \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z`;
    const explained = cli('explain', 'app-1.disk').out;
    expect(explained).toMatch(
      new RegExp(
        `  earlier   requestId ${app1.requestId}, writes applied up to seq \\d+: its lock lapsed; ${tookOver}`,
      ),
    );
    // On this host's clock (a SQLite store counts from boot), within this test.
    const at = Date.parse(/took the target over at (\S+Z)/.exec(explained)![1]!);
    expect(Date.now() - at).toBeGreaterThan(0);
    expect(Date.now() - at).toBeLessThan(90_000);
    await until('the timeline says who took over', () =>
      new RegExp(`-> invalidated MODIFIED \\(${tookOver}\\)`).test(cli('events', '--target', 'app-1.disk').out),
    );
    // And what the foreign writer changed since app-1 last saw the disk: its first page, at least.
    expect(explained).toMatch(/\n {2}changed {3}0-\d+[,( ].*\(\d+ ranges?(, coarsened)?\)/);
    expect(cli('events', '--target', 'app-1.disk').out).toMatch(/-> invalidated MODIFIED .* {2}changed: 0-\d+/);
  }, 90_000);

  it('reboot-storage: every acknowledged write is still readable', async () => {
    const acked = Object.fromEntries(status().handles.map((h) => [h.app, h.acked]));
    expect(cli('reboot-storage').code).toBe(0);
    await until('the workloads active again', () =>
      status()
        .handles.filter((h) => h.app !== 'app-1')
        .every((h) => h.state === 'active' && h.acked > acked[h.app]!),
    );
    for (const app of ['app-2', 'app-3', 'app-4']) {
      const text = cli('read', `${app}.disk`).out;
      expect(intactRecords(text, acked[app]!), app).toBe(acked[app]);
    }
  }, 90_000);

  it('down stops every process', async () => {
    const pids = [...status().replicas, ...status().nodes].map((p) => p.pid);
    expect(pids.every(alive)).toBe(true);
    expect(cli('down').code).toBe(0);
    await until('the launcher to exit', () => launcher!.exitCode !== null, 20_000);
    await until('no child left', () => !pids.some(alive), 10_000);
    expect(cli('status').code).not.toBe(0);
  }, 60_000);

  it('Ctrl-C stops every process', async () => {
    const d = join(t.dir, 'ctrl-c');
    const p = startCluster(d);
    await until('up', () => existsSync(join(d, 'control.json')), 30_000);
    const s = await started(d);
    const pids = [...s.replicas, ...s.nodes].map((x) => x.pid);
    p.kill('SIGINT');
    await new Promise((r) => p.once('exit', r));
    await until('no child left', () => !pids.some(alive), 10_000);
  }, 60_000);

  it('a killed launcher leaves no orphan processes', async () => {
    const d = join(t.dir, 'killed');
    const p = startCluster(d);
    await until('up', () => existsSync(join(d, 'control.json')), 30_000);
    const s = await started(d);
    const pids = [...s.replicas, ...s.nodes].map((x) => x.pid);
    expect(pids.every(alive)).toBe(true);
    p.kill('SIGKILL');
    await until('no child left', () => !pids.some(alive), 10_000);
  }, 60_000);
});

/** The status of the cluster in `d` once every replica and node of it runs (has a live process). */
async function started(d: string): Promise<Status> {
  let s: Status | undefined;
  await until(
    'every replica and node running',
    () => {
      s = JSON.parse(execFileSync('node', [CLI, 'status', '--json', '--dir', d], { encoding: 'utf8' })) as Status;
      return s.replicas.length > 0 && s.nodes.length > 0 && [...s.replicas, ...s.nodes].every((x) => alive(x.pid));
    },
    30_000,
  );
  return s!;
}

/** Every listening TCP socket on `port`, as `address:port` from /proc/net/tcp and tcp6 (hex, as the kernel writes them). */
function listening(port: number): string[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const out: string[] = [];
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(f, 'utf8').split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/);
      if (state === '0A' && local?.endsWith(`:${hexPort}`)) out.push(local);
    }
  }
  return out;
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

describe('safe-resume up --stately', () => {
  const d = join(t.dir, 'stately');
  let p: ChildProcess | undefined;
  let port = 0;
  afterAll(() => {
    if (p && p.exitCode === null) p.kill('SIGKILL');
  });

  it('relays from 127.0.0.1 only (not every interface), behind the control token', async () => {
    port = await freePort();
    p = startCluster(d, [
      '--replicas',
      '1',
      '--nodes',
      '1',
      '--apps',
      '1',
      '--stately',
      '--stately-port',
      String(port),
    ]);
    await until('up', () => existsSync(join(d, 'control.json')) && /stately/.test(printed.get(d) ?? ''), 30_000);
    // 127.0.0.1 in the kernel's little-endian hex; nothing on 0.0.0.0 or [::].
    expect(listening(port)).toEqual([`0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`]);
    const page = printedUrl(d, 'stately');
    expect(page).toBe(`http://127.0.0.1:${port}/#token=${controlFile(d).token}`);
    expect((await upgrade(`ws://127.0.0.1:${port}/events`)).status).toBe(401);
  }, 60_000);

  it('down ends the launcher (the relay kept it running)', async () => {
    const s = JSON.parse(execFileSync('node', [CLI, 'status', '--json', '--dir', d], { encoding: 'utf8' })) as Status;
    const pids = [...s.replicas, ...s.nodes].map((x) => x.pid);
    expect(execFileSync('node', [CLI, 'down', '--dir', d], { encoding: 'utf8' })).toMatch(/^stopped the cluster in /);
    await until('the launcher to exit', () => p!.exitCode !== null, 20_000);
    expect(p!.exitCode).toBe(0);
    await until('no child left', () => !pids.some(alive), 10_000);
    expect(listening(port)).toEqual([]);
  }, 60_000);
});

describe('safe-resume up --chaos', () => {
  it('drives random faults against the real processes, checks the history, and reports a JSON summary', () => {
    const d = join(t.dir, 'chaos');
    let out: string;
    let code = 0;
    try {
      out = execFileSync(
        'node',
        [CLI, 'up', '--chaos', '--for', '8', '--seed', '11', '--json', '--dir', d, '--hold-ms', '500'],
        { encoding: 'utf8', timeout: 120_000, stdio: ['ignore', 'pipe', 'ignore'] },
      );
    } catch (err) {
      code = (err as { status?: number }).status ?? 1;
      out = (err as { stdout?: string }).stdout ?? '';
    }
    const summary = JSON.parse(out) as {
      seed: number;
      faults: Record<string, number>;
      pauses: number;
      resumes: { granted: number; denied: number };
      writesAcknowledged: number;
      violations: unknown[];
    };
    expect(summary.seed).toBe(11);
    expect(Object.values(summary.faults).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    expect(summary.writesAcknowledged).toBeGreaterThan(0);
    expect(summary.violations).toEqual([]);
    expect(code).toBe(0);
    expect(existsSync(join(d, 'control.json'))).toBe(false);
  }, 150_000);

  it('over etcd: the leader killed again and again while the workload writes; the history comes from etcd and holds no violation', () => {
    const d = join(t.dir, 'chaos-etcd');
    const run = spawnSync(
      'node',
      [
        CLI,
        'up',
        '--chaos',
        '--store',
        'etcd',
        '--faults',
        'etcd-leader-kill,replica-kill',
        '--for',
        '8',
        '--seed',
        '2',
        '--json',
        '--dir',
        d,
        '--hold-ms',
        '500',
      ],
      { encoding: 'utf8', timeout: 120_000 },
    );
    expect(run.status, run.stderr).toBe(0);
    const summary = JSON.parse(run.stdout) as {
      faults: Record<string, number>;
      writesAcknowledged: number;
      violations: unknown[];
    };
    expect(summary.faults['etcd-leader-kill']).toBeGreaterThan(0);
    expect(summary.writesAcknowledged).toBeGreaterThan(0);
    expect(summary.violations).toEqual([]);
  }, 150_000);
});

describe('safe-resume up --tls-cert --tls-key --tls-ca', () => {
  const d = join(t.dir, 'tls');
  const pki = join(t.dir, 'pki');
  let p: ChildProcess | undefined;
  afterAll(() => {
    if (p && p.exitCode === null) p.kill('SIGKILL');
  });

  /** A CA and a certificate for 127.0.0.1 signed by it, made with Debian's openssl. */
  function makeCertificates(): { cert: string; key: string; ca: string } {
    mkdirSync(pki, { recursive: true });
    const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: pki, stdio: 'ignore' });
    ssl(
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      '2',
      '-subj',
      '/CN=safe-resume test CA',
    );
    ssl(
      'req',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      'host.key',
      '-out',
      'host.csr',
      '-subj',
      '/CN=replica-host',
    );
    writeFileSync(
      join(pki, 'host.ext'),
      'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n',
    );
    ssl(
      'x509',
      '-req',
      '-in',
      'host.csr',
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      'host.crt',
      '-days',
      '2',
      '-extfile',
      'host.ext',
    );
    return { cert: join(pki, 'host.crt'), key: join(pki, 'host.key'), ca: join(pki, 'ca.crt') };
  }

  it("serves every replica over wss:// with the operator's certificate; nodes and the CLI work through it", async () => {
    const c = makeCertificates();
    p = startCluster(d, [
      '--replicas',
      '2',
      '--nodes',
      '1',
      '--apps',
      '1',
      '--tls-cert',
      c.cert,
      '--tls-key',
      c.key,
      '--tls-ca',
      c.ca,
    ]);
    await until('up', () => existsSync(join(d, 'control.json')), 30_000);
    const urls = [...(printed.get(d) ?? '').matchAll(/^ {2}replica-\d +(\w+:\/\/\S+)/gm)].map((m) => m[1]!);
    expect(urls.length).toBe(2);
    for (const u of urls) expect(u).toMatch(/^wss:\/\/127\.0\.0\.1:\d+$/);
    const st = () =>
      JSON.parse(execFileSync('node', [CLI, 'status', '--json', '--dir', d], { encoding: 'utf8' })) as Status;
    await until('the handle to write', () => st().handles.some((h) => h.state === 'active' && h.acked > 0), 30_000);
    // What listens is TLS with the operator's certificate, checked against the operator's CA.
    const peer = await new Promise<string>((resolve, reject) => {
      const s = tlsConnect({ host: '127.0.0.1', port: Number(new URL(urls[0]!).port), ca: readFileSync(c.ca) }, () => {
        resolve(String(s.getPeerCertificate().subject.CN));
        s.destroy();
      });
      s.once('error', reject);
    });
    expect(peer).toBe('replica-host');
    expect(execFileSync('node', [CLI, 'write', 'tls.disk', 'over-tls', '--dir', d], { encoding: 'utf8' })).toMatch(
      /^wrote 8 bytes to tls.disk as cli /m,
    );
    expect(execFileSync('node', [CLI, 'read', 'tls.disk', '--dir', d], { encoding: 'utf8' })).toMatch(/^over-tls/);
    execFileSync('node', [CLI, 'down', '--dir', d], { encoding: 'utf8' });
    await until('the launcher to exit', () => p!.exitCode !== null, 20_000);
  }, 90_000);

  it('refuses half a TLS configuration or an unreadable file with a usage error that names it', () => {
    const half = spawnSync('node', [CLI, 'up', '--dir', join(t.dir, 'tls-bad'), '--tls-cert', join(pki, 'host.crt')], {
      encoding: 'utf8',
    });
    expect(half.status).toBe(2);
    expect(half.stderr).toContain('--tls-cert, --tls-key and --tls-ca go together');
    const missing = spawnSync(
      'node',
      [
        CLI,
        'up',
        '--dir',
        join(t.dir, 'tls-bad'),
        '--tls-cert',
        join(pki, 'nope.crt'),
        '--tls-key',
        join(pki, 'host.key'),
        '--tls-ca',
        join(pki, 'ca.crt'),
      ],
      { encoding: 'utf8' },
    );
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain('nope.crt');
    expect(existsSync(join(t.dir, 'tls-bad', 'control.json'))).toBe(false);
  });
});

describe('safe-resume up --store etcd', () => {
  const d = join(t.dir, 'etcd');
  let p: ChildProcess | undefined;
  afterAll(() => {
    if (p && p.exitCode === null) p.kill('SIGKILL');
  });
  const st = () =>
    JSON.parse(execFileSync('node', [CLI, 'status', '--json', '--dir', d], { encoding: 'utf8' })) as Status & {
      etcd: Array<{ id: string; state: string; pid: number | null }>;
      store: string;
    };
  /** The etcd processes whose data lives under `d`. */
  const etcdPids = (dir = d) =>
    readdirSync('/proc')
      .filter((x) => /^\d+$/.test(x))
      .filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(join(dir, 'etcd', 'etcd-'));
        } catch {
          return false;
        }
      });

  it('runs the replicas over a local 3-member etcd; a killed member (a quorum stays) stops nothing; down stops the members too', async () => {
    p = startCluster(d, ['--store', 'etcd', '--replicas', '2', '--nodes', '1', '--apps', '1', '--hold-ms', '4000']);
    await until('up', () => existsSync(join(d, 'control.json')), 40_000);
    expect(printed.get(d)).toMatch(/^ {2}etcd-1 +127\.0\.0\.1:\d+$/m);
    const s = st();
    expect(s.store).toMatch(/^etcd:\/\/127\.0\.0\.1:\d+,127\.0\.0\.1:\d+,127\.0\.0\.1:\d+$/);
    expect(s.etcd.map((m) => `${m.id} ${m.state}`)).toEqual(['etcd-1 running', 'etcd-2 running', 'etcd-3 running']);
    await until('the handle to write', () => st().handles.some((h) => h.state === 'active' && h.acked > 5), 30_000);
    expect(execFileSync('node', [CLI, 'kill', 'etcd-1', '--dir', d], { encoding: 'utf8' })).toMatch(/^killed etcd-1$/m);
    const before = st().handles[0]!.acked;
    await until(
      'writes to go on with two members',
      () => st().handles[0]!.state === 'active' && st().handles[0]!.acked > before + 10,
      30_000,
    );
    expect(execFileSync('node', [CLI, 'write', 'e.disk', 'on-etcd', '--dir', d], { encoding: 'utf8' })).toMatch(
      /^wrote 7 bytes to e.disk as cli /m,
    );
    expect(execFileSync('node', [CLI, 'read', 'e.disk', '--dir', d], { encoding: 'utf8' })).toMatch(/^on-etcd/);
    // The launcher's own client of the store speaks TLS to the local members, as the replicas do.
    expect(execFileSync('node', [CLI, 'explain', 'e.disk', '--dir', d], { encoding: 'utf8' })).toContain(
      '\n  owner     default\n',
    );
    expect(execFileSync('node', [CLI, 'restart', 'etcd-1', '--dir', d], { encoding: 'utf8' })).toMatch(
      /^restarted etcd-1$/m,
    );
    expect(st().etcd[0]!.state).toBe('running');
    expect(etcdPids()).toHaveLength(3);
    // A node partitioned: once its session is lost, status tells how long the hold has left, from the
    // session lease's TTL at etcd (whole seconds), until the lock lapses.
    execFileSync('node', [CLI, 'partition', 'node-1', '--dir', d], { encoding: 'utf8' });
    const holds: string[] = [];
    await until(
      'a hold running down, then lapsed',
      () => {
        const h = st().handles[0] as Status['handles'][number] & { hold: string | null; holdLeftMs: number | null };
        holds.push(`${h.hold}${h.holdLeftMs !== null ? `:${h.holdLeftMs}` : ''}`);
        return h.hold === 'lapsed';
      },
      40_000,
    );
    expect(
      holds.some((x) => /^running:\d+$/.test(x)),
      holds.join(' '),
    ).toBe(true);
    execFileSync('node', [CLI, 'heal', 'node-1', '--dir', d], { encoding: 'utf8' });
    execFileSync('node', [CLI, 'down', '--dir', d], { encoding: 'utf8' });
    await until('the launcher to exit', () => p!.exitCode !== null, 30_000);
    expect(etcdPids()).toEqual([]);
  }, 120_000);

  it('a launcher killed with SIGKILL leaves no etcd member running', async () => {
    const d2 = join(t.dir, 'etcd-orphans');
    const q = startCluster(d2, ['--store', 'etcd', '--replicas', '1', '--nodes', '1', '--apps', '1']);
    const members = () => etcdPids(d2);
    try {
      await until('up', () => existsSync(join(d2, 'control.json')), 40_000);
      expect(members()).toHaveLength(3);
      q.kill('SIGKILL');
      await until('the etcd members to go with it', () => members().length === 0, 15_000);
    } finally {
      if (q.exitCode === null) q.kill('SIGKILL');
    }
  }, 60_000);

  it('refuses --etcd-endpoints without --store etcd, bad endpoints, remote chaos, bad --faults and --netns, with usage errors', () => {
    const up = (...a: string[]) =>
      spawnSync('node', [CLI, 'up', '--dir', join(t.dir, 'etcd-bad'), ...a], { encoding: 'utf8' });
    expect(up('--etcd-endpoints', '127.0.0.1:2379').stderr).toContain('--etcd-endpoints goes with --store etcd');
    const bad = up('--store', 'etcd', '--etcd-endpoints', 'nohost');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('HOST:PORT');
    const chaosRemote = up('--store', 'etcd', '--etcd-endpoints', '127.0.0.1:2379', '--chaos', '--for', '1');
    expect(chaosRemote.status).toBe(2);
    expect(chaosRemote.stderr).toContain('drop --etcd-endpoints');
    expect(up('--store', 'memory', '--chaos', '--for', '1').stderr).toContain('--chaos needs --store sqlite or etcd');
    expect(up('--chaos', '--faults', 'link-cut', '--for', '1').stderr).toContain('--faults link-cut needs --netns');
    expect(up('--chaos', '--faults', 'meteor', '--for', '1').stderr).toContain('--faults: expected kinds among');
    expect(up('--faults', 'replica-kill').stderr).toContain('--faults goes with --chaos');
    const noPlan = up('--netns', join(t.dir, 'no-such-plan.json'));
    expect(noPlan.status).not.toBe(0);
    expect(noPlan.stderr).toContain('--netns');
  });
});
