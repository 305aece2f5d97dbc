/**
 * The launcher's life as an operator sees it, through real processes: started, interrupted, started
 * twice, stopped. Every case here was seen going wrong once; each asserts what the user sees now.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { pathToFileURL } from 'node:url';
import { Application } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { WebSocketTransport } from '../transport/ws.js';
import { replicaProcess, SECRET } from '../bench/replica-process.js';
import { freePort } from '../transport/ports.js';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';
import { launch, until } from './e2e.js';

const running = new Set<ChildProcess>();

/** `safe-resume up` on a small cluster in `dir`, in a process group of its own (a Ctrl-C signals the whole group). */
function up(dir: string, extra: string[] = [], env: NodeJS.ProcessEnv = process.env) {
  const u = launch(['up', '--dir', dir, '--replicas', '1', '--nodes', '1', '--apps', '1', ...extra], {
    running,
    detached: true,
    env,
  });
  return { ...u, exited: u.exited.then(({ code, signal }) => ({ code, signal })) };
}

function cli(dir: string, ...args: string[]) {
  const r = spawnSync('node', [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Running (a process that exited but was not yet reaped by this one, a zombie, is not). */
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

afterEach(() => {
  for (const p of running) p.kill('SIGKILL');
});

describe('the launcher as an operator uses it', () => {
  it('Ctrl-C or SIGTERM to the whole process group (children dying at once) stops cleanly: exit 0, no trace, no control.json', async () => {
    const t = tempDir();
    try {
      for (let round = 0; round < 6; round++) {
        const u = up(t.dir, ['--replicas', '3', '--nodes', '2', '--apps', '2']);
        await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(u.out()));
        const s = JSON.parse(cli(t.dir, 'status', '--json').out) as {
          replicas: Array<{ pid: number }>;
          nodes: Array<{ pid: number }>;
        };
        const pids = [...s.replicas, ...s.nodes].map((c) => c.pid);
        // As a terminal's Ctrl-C does: SIGINT to the launcher and every child at once (and SIGTERM, as
        // \`timeout\` and service managers send to the whole group).
        process.kill(-u.proc.pid!, round % 2 === 0 ? 'SIGINT' : 'SIGTERM');
        const end = await u.exited;
        expect({ end, err: u.err() }).toEqual({
          end: { code: 0, signal: null },
          err: expect.not.stringMatching(/Error|EPIPE|at /),
        });
        expect(u.out()).toMatch(/stopped\n$/);
        expect(existsSync(join(t.dir, 'control.json'))).toBe(false);
        expect(pids.filter(alive)).toEqual([]);
      }
    } finally {
      t.cleanup();
    }
  }, 120_000);

  it('with --stately, Ctrl-C stops and exits (it printed "stopped" and never exited)', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir, ['--stately', '--stately-port', String(await freePort())]);
      await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /stately/.test(u.out()), 60_000);
      process.kill(-u.proc.pid!, 'SIGINT');
      const end = await Promise.race([
        u.exited,
        new Promise<'still running'>((r) => setTimeout(() => r('still running'), 15_000)),
      ]);
      expect({ end, out: u.out().slice(-40) }).toEqual({
        end: { code: 0, signal: null },
        out: expect.stringMatching(/stopped\n$/),
      });
    } finally {
      t.cleanup();
    }
  }, 60_000);

  it('a second up in the same --dir refuses, naming the running launcher; the first cluster keeps its handles and its control file', async () => {
    const t = tempDir();
    try {
      const first = up(t.dir);
      await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(first.out()));
      const control = readFileSync(join(t.dir, 'control.json'), 'utf8');
      await until(
        'the handle active',
        () =>
          (JSON.parse(cli(t.dir, 'status', '--json').out) as { handles: Array<{ state: string }> }).handles[0]
            ?.state === 'active',
      );
      const second = up(t.dir);
      const end = await second.exited;
      expect(end.code).toBe(3);
      expect(second.err()).toBe(
        `safe-resume: a cluster is already running in ${t.dir} (launcher pid ${first.proc.pid}, up since ${JSON.parse(readFileSync(join(t.dir, 'launcher.lock'), 'utf8')).started}); stop it with 'safe-resume down --dir ${t.dir}', or use another --dir\n`,
      );
      expect(readFileSync(join(t.dir, 'control.json'), 'utf8')).toBe(control);
      const s = JSON.parse(cli(t.dir, 'status', '--json').out) as {
        handles: Array<{ state: string; reason: string | null; requestId: string }>;
      };
      expect(s.handles).toEqual([expect.objectContaining({ state: 'active', reason: null })]);
      // A foreign write is told who holds the target, and that the lock lives as long as its session.
      const locked = cli(t.dir, 'write', 'app-1.disk', 'x');
      expect([locked.code, locked.err]).toEqual([
        1,
        expect.stringContaining(
          `LOCKED: app-1.disk is held by requestId ${s.handles[0]!.requestId} (principal default) through session`,
        ),
      ]);
      expect(locked.err).toContain('which renews the lock while it lives');
      expect(cli(t.dir, 'status').out).toContain(`requestId=${s.handles[0]!.requestId}`);
      // Bytes are bytes, not characters.
      expect(JSON.parse(cli(t.dir, 'write', 'notes.disk', 'héllo wörld ✓', '--json').out)).toMatchObject({
        ok: true,
        bytes: Buffer.byteLength('héllo wörld ✓'),
      });
      // down waits until the launcher and its processes are gone; a second down finds nothing and says so.
      const pids = [
        first.proc.pid!,
        ...(JSON.parse(cli(t.dir, 'status', '--json').out) as { replicas: Array<{ pid: number }> }).replicas.map(
          (r) => r.pid,
        ),
      ];
      const d = cli(t.dir, 'down');
      expect(d).toMatchObject({
        code: 0,
        out: `stopped the cluster in ${t.dir} (launcher pid ${first.proc.pid} and every process it ran)\n`,
      });
      expect(pids.filter(alive)).toEqual([]);
      expect(cli(t.dir, 'down')).toMatchObject({ code: 0, out: `no cluster is running in ${t.dir}\n` });
      // Started again over the same directory, it says what it reuses (a clean stop kept no requestId).
      const again = up(t.dir);
      await until('the cluster again', () => /inspector/.test(again.out()));
      expect(again.out()).toMatch(new RegExp(`^  reusing the store in ${t.dir}: 2 targets, 0 kept requestIds$`, 'm'));
      // clean refuses while it runs, then removes the cluster's data and nothing else.
      writeFileSync(join(t.dir, 'notes.txt'), 'mine');
      expect(cli(t.dir, 'clean')).toMatchObject({ code: 3, err: expect.stringContaining('a cluster is running in') });
      expect(cli(t.dir, 'down').code).toBe(0);
      const c = cli(t.dir, 'clean', '--json');
      expect(JSON.parse(c.out)).toEqual({
        ok: true,
        removed: expect.arrayContaining(['store.sqlite', 'node-1.handles.jsonl', 'logs', 'cluster-secret']),
        kept: ['notes.txt'],
      });
      expect(readdirSync(t.dir)).toEqual(['notes.txt']);
    } finally {
      t.cleanup();
    }
  }, 120_000);

  it('a port in use, a data directory that cannot be written, a read-only store and one that is not a database: one line each, what to do, a coded exit', async () => {
    const t = tempDir();
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const taken = (blocker.address() as net.AddressInfo).port;
    try {
      const cases: Array<[string[], number, RegExp]> = [
        [
          ['--port', String(taken)],
          4,
          new RegExp(
            `^safe-resume: replica-1: 127\\.0\\.0\\.1:${taken} is already in use; pick another port or stop what listens there\n$`,
          ),
        ],
        [
          ['--inspector-port', String(taken)],
          4,
          new RegExp(
            `^safe-resume: the inspector: 127\\.0\\.0\\.1:${taken} is already in use; pick another port or stop what listens there\n$`,
          ),
        ],
      ];
      for (const [args, code, said] of cases) {
        const u = up(join(t.dir, `d${code}-${args[0]}`), args);
        const end = await u.exited;
        expect({ args, code: end.code, err: u.err() }).toEqual({ args, code, err: expect.stringMatching(said) });
      }
      // etcd not on the PATH: the package to install.
      const noEtcd = spawnSync(process.execPath, [CLI, 'up', '--store', 'etcd', '--dir', join(t.dir, 'e')], {
        encoding: 'utf8',
        env: { ...process.env, PATH: '/nonexistent' },
        timeout: 30_000,
      });
      expect([noEtcd.status, noEtcd.stderr]).toEqual([
        7,
        'safe-resume: etcd is not installed: apt-get install -y etcd-server (Debian), or pass --etcd-endpoints of a running cluster\n',
      ]);
      // etcd there but not openssl (it makes the local etcd's certificates): that package.
      const etcdOnly = join(t.dir, 'etcd-only-bin');
      mkdirSync(etcdOnly);
      symlinkSync(
        spawnSync('sh', ['-c', 'command -v etcd'], { encoding: 'utf8' }).stdout.trim(),
        join(etcdOnly, 'etcd'),
      );
      const noOpenssl = spawnSync(process.execPath, [CLI, 'up', '--store', 'etcd', '--dir', join(t.dir, 'e2')], {
        encoding: 'utf8',
        env: { ...process.env, PATH: etcdOnly },
        timeout: 30_000,
      });
      expect([noOpenssl.status, noOpenssl.stderr]).toEqual([
        7,
        'safe-resume: openssl is not installed: apt-get install -y openssl (the local etcd takes only clients with a certificate it makes)\n',
      ]);
      const locked = join(t.dir, 'locked');
      mkdirSync(locked, { mode: 0o500 });
      chmodSync(locked, 0o500);
      // Root writes any directory whatever its mode: for root it is made immutable instead.
      const root = process.getuid?.() === 0;
      if (root) expect(spawnSync('chattr', ['+i', locked]).status).toBe(0);
      try {
        const u = up(join(locked, 'c'));
        expect([(await u.exited).code, u.err()]).toEqual([
          5,
          expect.stringMatching(
            /^safe-resume: data directory .* cannot be written \((EACCES|EPERM)\); choose a directory you can write with --dir, or fix its permissions\n$/,
          ),
        ]);
      } finally {
        if (root) spawnSync('chattr', ['-i', locked]);
      }
      const ro = join(t.dir, 'ro');
      const first = up(ro);
      await until('the cluster', () => /inspector/.test(first.out()));
      expect(cli(ro, 'down').code).toBe(0);
      chmodSync(join(ro, 'store.sqlite'), 0o400);
      if (process.getuid?.() === 0) spawnSync('chattr', ['+i', join(ro, 'store.sqlite')]);
      const u = up(ro);
      const end = await u.exited;
      if (process.getuid?.() === 0) spawnSync('chattr', ['-i', join(ro, 'store.sqlite')]);
      expect([end.code, u.err()]).toEqual([
        6,
        `safe-resume: the store ${join(ro, 'store.sqlite')} is read-only: make it writable (chmod u+w) or start a new cluster with another --dir\n`,
      ]);
      // A store that is not a database (overwritten, truncated): the same, before anything starts.
      const bad = join(t.dir, 'bad');
      mkdirSync(bad, { mode: 0o700 });
      writeFileSync(join(bad, 'store.sqlite'), 'notes, not a database\n'.repeat(500), { mode: 0o600 });
      const b = up(bad);
      expect((await b.exited).code).toBe(6);
      expect(b.err()).toBe(
        `safe-resume: the store ${join(bad, 'store.sqlite')} cannot be used (file is not a database): restore it from a backup, or move it away to start empty\n`,
      );
      expect(existsSync(join(bad, 'control.json'))).toBe(false);
    } finally {
      blocker.close();
      t.cleanup();
    }
  }, 120_000);

  it('the SDK: after agent.stop() a program exits by itself (no socket, timer or file left open), its handles closed at the storage', async () => {
    const t = tempDir();
    const replica = await replicaProcess(t.dir, 'sqlite');
    try {
      const script = join(t.dir, 'program.mjs');
      const index = pathToFileURL(join(import.meta.dirname, '..', 'dist', 'index.js')).href;
      writeFileSync(
        script,
        `
        import { Application, NodeAgent, WebSocketTransport } from ${JSON.stringify(index)};
        const agent = new NodeAgent({ id: 'node-1', replicas: [${JSON.stringify(replica.url)}], transport: new WebSocketTransport(), secret: ${JSON.stringify(SECRET)}, dataDir: ${JSON.stringify(t.dir)} });
        await agent.start();
        const app = new Application(agent, { name: 'vm-42' });
        const h = await app.open('vm42.disk', { mode: 'write' });
        await h.write(0, new TextEncoder().encode('hello'));
        const other = await app.open('other.disk');
        await agent.stop();
        console.log('stopped', h.state, other.state);
      `,
      );
      const r = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 20_000 });
      expect({ status: r.status, signal: r.signal, out: r.stdout, err: r.stderr }).toEqual({
        status: 0,
        signal: null,
        out: 'stopped closed closed\n',
        err: '',
      });
      // The locks went with the handles: another node opens the targets at once.
      const agent = new NodeAgent({
        id: 'node-2',
        replicas: [replica.url],
        transport: new WebSocketTransport(),
        secret: SECRET,
      });
      await agent.start();
      const app = new Application(agent, { name: 'other' });
      const h = await app.open('vm42.disk');
      expect(new TextDecoder().decode(await h.read(0, 5))).toBe('hello');
      await agent.stop();
    } finally {
      replica.proc.kill('SIGKILL');
      t.cleanup();
    }
  }, 60_000);

  it('CLI conventions: per-command help, --version, strict switches in a config file, JSON on stdout without a cluster, one word for acknowledged writes', () => {
    const t = tempDir();
    try {
      const run = (...args: string[]) => spawnSync('node', [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
      const create = run('create', '--help');
      expect(create.status).toBe(0);
      expect(create.stdout).toMatch(/^Usage:\n {2}safe-resume create <target> --size SIZE/);
      expect(create.stdout).not.toContain('safe-resume partition');
      expect(run('up', '--help').stdout).toMatch(
        /^Usage:\n {2}safe-resume up \[options\][\s\S]*Options for up:\n {2}--replicas N/,
      );
      expect(run('help', 'down').stdout).toContain('safe-resume down [--no-wait]');
      const pkg = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as {
        version: string;
      };
      expect(run('--version').stdout).toBe(`safe-resume ${pkg.version}\n`);
      writeFileSync(join(t.dir, 'c.json'), '{"chaos": "false"}');
      const cfg = run('up', '--config', join(t.dir, 'c.json'), '--dir', join(t.dir, 'x'));
      expect([cfg.status, cfg.stderr]).toEqual([
        2,
        expect.stringContaining('chaos must be true or false, got "false"'),
      ]);
      const none = run('status', '--json', '--dir', join(t.dir, 'nothing'));
      expect(none.status).toBe(1);
      expect(JSON.parse(none.stdout)).toMatchObject({ ok: false, code: 'NOT_RUNNING' });
      const sim = JSON.parse(run('sim', '--seeds', '2', '--workers', '1', '--json').stdout) as Record<string, unknown>;
      expect(sim).toHaveProperty('writesAcknowledged');
      expect(sim).not.toHaveProperty('writesAcked');
    } finally {
      t.cleanup();
    }
  }, 60_000);

  it('bench exits once its table is printed (a leftover timer kept it running two minutes more)', () => {
    // In this process, as `safe-resume bench` runs when node already has --expose-gc.
    const r = spawnSync(process.execPath, ['--expose-gc', CLI, 'bench', '--smoke', '--only', 'failover'], {
      encoding: 'utf8',
      timeout: 90_000,
    });
    expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
    expect(r.stdout).toMatch(/\| failover\.20\.p50 \|/);
  }, 120_000);

  it('write with every replica down says what it waited for within its deadline (exit 8), and does nothing later', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir);
      await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(u.out()));
      expect(cli(t.dir, 'kill', 'replica-1').code).toBe(0);
      const w = cli(t.dir, 'write', 'late.disk', 'never');
      expect([w.code, w.err]).toEqual([
        8,
        'safe-resume write: UNAVAILABLE: write late.disk: no replica answered within 10 s (replica-1 down); nothing was done\n',
      ]);
      expect(cli(t.dir, 'restart', 'replica-1').code).toBe(0);
      await until(
        'the node back',
        () =>
          (JSON.parse(cli(t.dir, 'status', '--json').out) as { nodes: Array<{ state: string }> }).nodes[0]?.state ===
          'connected',
      );
      // Given up means given up: the write the launcher was waiting to send never lands.
      await new Promise((r) => setTimeout(r, 2000));
      const r = JSON.parse(cli(t.dir, 'read', 'late.disk', '--json').out) as { ok: boolean; bytes: number };
      expect(r).toMatchObject({ ok: true, bytes: 0 });
    } finally {
      t.cleanup();
    }
  }, 90_000);

  it('up --json: the addresses as one JSON object, status as JSON lines, the end as JSON; piped without --json, every view is timestamped', async () => {
    const t = tempDir();
    try {
      const u = up(join(t.dir, 'j'), ['--json']);
      await until('a status line', () => /"event":"status".*\n/.test(u.out()));
      const [first, second] = u
        .out()
        .split('\n')
        .slice(0, 2)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(first).toMatchObject({
        event: 'up',
        replicas: [expect.stringMatching(/^ws:\/\/127\.0\.0\.1:\d+$/)],
        nbd: { 'node-1': expect.stringMatching(/^nbd\+unix:\/\/\/\?socket=\//) },
        nbdTls: {},
        control: expect.stringMatching(/^http:/),
        inspector: expect.stringMatching(/#token=/),
      });
      expect(second).toMatchObject({
        event: 'status',
        at: expect.any(String),
        replicas: [expect.objectContaining({ id: 'replica-1' })],
      });
      expect(cli(join(t.dir, 'j'), 'down').code).toBe(0);
      await u.exited;
      expect(u.out().trim().split('\n').at(-1)).toBe('{"event":"stopped"}');
      const plain = up(join(t.dir, 'p'));
      await until('a view', () => /^-- \d{4}-\d\d-\d\dT[\d:.]+Z\nreplica-1 /m.test(plain.out()));
      expect(cli(join(t.dir, 'p'), 'down').code).toBe(0);
      // Colour: the pretty logs are coloured where colour is asked for (a terminal, or FORCE_COLOR);
      // --no-color (or NO_COLOR) turns it off for every process.
      const forced: NodeJS.ProcessEnv = { ...process.env, FORCE_COLOR: '1' };
      delete forced.NO_COLOR;
      for (const [name, extra, coloured] of [
        ['c', [], true],
        ['n', ['--no-color'], false],
      ] as const) {
        const u = up(join(t.dir, name), ['--pretty', ...extra], forced);
        await until('pretty logs', () => /node-1/.test(u.out()) && /INFO/.test(u.out())).catch((err: Error) => {
          throw new Error(
            `${err.message}: stdout ${JSON.stringify(u.out().slice(0, 2000))}, stderr ${JSON.stringify(u.err().slice(0, 2000))}`,
          );
        });
        expect(cli(join(t.dir, name), 'down').code).toBe(0);
        await u.exited;
        expect(u.out().includes('\x1b['), `${name}: ${u.out().slice(0, 2000)}`).toBe(coloured);
      }
    } finally {
      t.cleanup();
    }
  }, 90_000);

  it('explain says who holds a target, whether that session lives, when the lock can lapse, and why a handle is paused', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir);
      await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(u.out()));
      type St = { handles: Array<{ state: string; requestId: string }> };
      await until(
        'the handle active',
        () => (JSON.parse(cli(t.dir, 'status', '--json').out) as St).handles[0]?.state === 'active',
      );
      const rid = (JSON.parse(cli(t.dir, 'status', '--json').out) as St).handles[0]!.requestId;
      // An active handle's lock is renewed by its live session: no hold period runs.
      expect(
        (JSON.parse(cli(t.dir, 'status', '--json').out) as { handles: Array<{ hold: string | null }> }).handles[0]!
          .hold,
      ).toBe(null);
      const live = cli(t.dir, 'explain', 'app-1.disk');
      expect(live.code).toBe(0);
      expect(live.out).toContain(`  holder    requestId ${rid} (principal default`);
      expect(live.out).toMatch(
        / {2}session {3}\S+ on replica-1, node node-1, heard from \d+ ms ago: alive, and renewing the lock/,
      );
      expect(live.out).toContain(`  handle    node-1/app-1 active requestId ${rid}, the holder`);
      expect(cli(t.dir, 'explain', rid).out.split('\n')[0]).toBe('app-1.disk');
      expect(cli(t.dir, 'partition', 'node-1').code).toBe(0);
      // The replica loses the silent session after a few heartbeats; then the hold period runs.
      let lost = '';
      // The replica and the node each notice the silence on their own heartbeat: wait for both.
      await until(
        'the session lost and the handle paused',
        () =>
          /no running replica has it \(lost\)/.test((lost = cli(t.dir, 'explain', 'app-1.disk').out)) &&
          / {2}handle {4}node-1\/app-1 (paused|resuming) /.test(lost),
      );
      expect(lost).toMatch(/ {2}lock {6}(the hold period runs: it lapses in \d+ ms|lapsed \d+ ms ago)/);
      expect(lost).toMatch(
        / {2}handle {4}node-1\/app-1 (paused|resuming) requestId \S+, the holder: its node is \w+ \(partitioned\)/,
      );
      const away = (
        JSON.parse(cli(t.dir, 'status', '--json').out) as {
          handles: Array<{
            pauseLeftMs: number | null;
            inStateMs: number;
            hold: string | null;
            holdLeftMs: number | null;
          }>;
        }
      ).handles[0]!;
      expect(away.pauseLeftMs).toBeGreaterThan(0);
      expect(away.pauseLeftMs).toBeLessThanOrEqual(60_000);
      // Its lock's hold period, as status tells it: running down (how long is left) or lapsed, since
      // the session that renewed it is lost; status -w prints the same lines.
      expect(['running', 'lapsed']).toContain(away.hold);
      if (away.hold === 'running') expect(away.holdLeftMs).toBeGreaterThan(0);
      expect(cli(t.dir, 'status').out).toMatch(
        / {2}node-1\/app-1 +app-1\.disk +(paused|resuming) .*( hold-in=[\d.]+s| hold=lapsed) /,
      );
      expect(cli(t.dir, 'heal').code).toBe(0);
      // A target written and closed: nobody holds it. One nobody ever opened is not there at all.
      expect(cli(t.dir, 'write', 'free.disk', 'x').code).toBe(0);
      expect(cli(t.dir, 'explain', 'free.disk').out).toContain('  lock      none: no writer holds it');
      expect(cli(t.dir, 'explain', 'nobody.disk')).toMatchObject({
        code: 9,
        out: '',
        err: expect.stringContaining('NOT_FOUND: no target or requestId called "nobody.disk"'),
      });
      // status -w: every second, timestamped when piped, with time in state, the serving replica,
      // the pause timeout while paused, writes/s and the requestId; Ctrl-C ends it.
      const w = spawn('node', [CLI, 'status', '-w', '--dir', t.dir], { stdio: ['ignore', 'pipe', 'pipe'] });
      running.add(w);
      let watched = '';
      w.stdout.on('data', (b: Buffer) => (watched += b.toString()));
      await until('three views', () => (watched.match(/^safe-resume status {2}\d{4}-/gm) ?? []).length >= 3);
      w.kill('SIGINT');
      expect(await new Promise((r) => w.once('exit', (code) => r(code)))).toBe(0);
      expect(watched).toMatch(
        new RegExp(
          `  node-1/app-1 +app-1\\.disk +\\w+ +for=[\\d.]+s( timeout-in=[\\d.]+s)?( hold(-in)?=\\S+)? writes/s=\\d+ on=replica-1 .*requestId=${rid}`,
        ),
      );
      // The timeline of that target: the partition, the pause, the heal, the granted resume.
      const story = cli(t.dir, 'events', '--target', 'app-1.disk').out;
      expect(story).toMatch(/^\d\d:\d\d:\d\d\.\d{3} {2}fault {4}partition node-1$/m);
      expect(story).toMatch(new RegExp(`handle   node-1/app-1 +app-1\\.disk  active -> paused  requestId ${rid}`));
      expect(story).toMatch(/fault {4}heal/);
      expect(story).toMatch(new RegExp(`-> active \\(resume granted, same requestId\\)  requestId ${rid}`));
      expect(story.indexOf('partition node-1')).toBeLessThan(story.indexOf('active -> paused'));
      const json = JSON.parse(cli(t.dir, 'events', '--json').out) as { events: Array<{ kind: string }> };
      expect(json.events.some((e) => e.kind === 'process')).toBe(true);
    } finally {
      t.cleanup();
    }
  }, 90_000);

  it('a replica whose store cannot be opened is shown failed, with the store error, not just down', async () => {
    const t = tempDir();
    const db = join(t.dir, 'store.sqlite');
    const root = process.getuid?.() === 0;
    try {
      const u = up(t.dir, ['--replicas', '2']);
      await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(u.out()));
      expect(cli(t.dir, 'kill', 'replica-2').code).toBe(0);
      // Read-only under the replica's feet (root writes any file whatever its mode: immutable then).
      if (root) expect(spawnSync('chattr', ['+i', db]).status).toBe(0);
      else chmodSync(db, 0o400);
      const r = cli(t.dir, 'restart', 'replica-2');
      expect([r.code, r.err]).toEqual([
        1,
        expect.stringMatching(/^safe-resume restart: \w+: replica-2 could not start: .*readonly database/),
      ]);
      type St = { replicas: Array<{ id: string; state: string; storeError: string | null }> };
      const s = JSON.parse(cli(t.dir, 'status', '--json').out) as St;
      expect(s.replicas.find((x) => x.id === 'replica-2')).toMatchObject({
        state: 'failed',
        storeError: expect.stringMatching(/readonly database/),
      });
      expect(cli(t.dir, 'status').out).toMatch(/^replica-2 +failed +sessions=0 {2}store: .*readonly database/m);
      expect(cli(t.dir, 'events').out).toMatch(/process {2}replica-2 exited \(could not start: .*readonly database\)/);
      if (root) spawnSync('chattr', ['-i', db]);
      else chmodSync(db, 0o600);
      expect(cli(t.dir, 'restart', 'replica-2').code).toBe(0);
      expect(
        (JSON.parse(cli(t.dir, 'status', '--json').out) as St).replicas.find((x) => x.id === 'replica-2'),
      ).toMatchObject({ state: 'serving', storeError: null });
    } finally {
      if (root) spawnSync('chattr', ['-i', db]);
      t.cleanup();
    }
  }, 90_000);
});
