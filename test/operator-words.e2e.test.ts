/**
 * What the operator reads, through real processes (the built CLI, `up` in a temp dir): every line says
 * what happened in words, with the documented fields, and nothing it did not do.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';
import { launch, until } from './e2e.js';

const running = new Set<ChildProcess>();

function up(dir: string, extra: string[] = []) {
  const u = launch(['up', '--dir', dir, '--replicas', '1', '--nodes', '1', '--apps', '1', ...extra], {
    running,
    detached: true,
  });
  return { proc: u.proc, out: u.both, exited: u.exited.then((e) => e.code) };
}

function cli(dir: string, ...args: string[]) {
  const r = spawnSync('node', [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

// Whatever a failed test left running goes at the end (the first cluster serves several tests).
afterAll(() => {
  for (const p of running) p.kill('SIGKILL');
});

describe('a cluster of one replica, one node, one app', () => {
  const t = tempDir();
  let u: ReturnType<typeof up>;
  beforeAll(async () => {
    u = up(t.dir);
    await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(u.out()));
    await until(
      'the handle active',
      () =>
        (JSON.parse(cli(t.dir, 'status', '--json').out) as { handles: Array<{ state: string }> }).handles[0]?.state ===
        'active',
    );
  }, 60_000);
  afterAll(async () => {
    cli(t.dir, 'down');
    u.proc.kill('SIGKILL');
    t.cleanup();
  });

  it('up counts in words: 1 replica, 1 node x 1 app (it said "1 replicas", "1 nodes x 1 apps")', () => {
    expect(u.out()).toMatch(new RegExp(`^safe-resume: 1 replica over ${t.dir}/store.sqlite, 1 node x 1 app$`, 'm'));
  });

  it('a request body over the limit is answered 413 with the documented message (it had "error", and the CLI printed "undefined")', () => {
    const big = 'x'.repeat(70 * 1024);
    const j = cli(t.dir, 'write', 'big.disk', big, '--json');
    expect(j.code).toBe(1);
    expect(JSON.parse(j.out)).toEqual({
      ok: false,
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/^request body over 65536 bytes/),
    });
    const h = cli(t.dir, 'write', 'big.disk', big);
    expect(h.err).toMatch(/^safe-resume write: INVALID_ARGUMENT: request body over 65536 bytes/);
    expect(h.err).not.toContain('undefined');
  });

  it('a wrong control token is refused in a sentence (it said "wrong the control token")', () => {
    const other = tempDir();
    try {
      const control = JSON.parse(readFileSync(join(t.dir, 'control.json'), 'utf8')) as { url: string; token: string };
      writeFileSync(join(other.dir, 'control.json'), JSON.stringify({ ...control, token: 'not-the-token' }));
      const r = cli(other.dir, 'status');
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/^safe-resume status: AUTH_FAILED: the control token is wrong \(/);
    } finally {
      other.cleanup();
    }
  });

  it('partition and heal say what they did in words, and heal names only the nodes that were partitioned', () => {
    const none = cli(t.dir, 'heal');
    expect(none).toMatchObject({ code: 0, out: 'nothing was partitioned\n' });
    expect(JSON.parse(cli(t.dir, 'heal', 'node-1', '--json').out)).toEqual({ ok: true, healed: [] });
    const p = cli(t.dir, 'partition', 'node-1', '--for', '60');
    expect(p).toMatchObject({ code: 0, out: 'node-1 partitioned; it heals in 60 s\n' });
    expect(JSON.parse(cli(t.dir, 'status', '--json').out)).toMatchObject({
      nodes: [{ id: 'node-1', partitioned: true }],
    });
    const h = cli(t.dir, 'heal');
    expect(h).toMatchObject({ code: 0, out: 'healed node-1\n' });
    expect(JSON.parse(cli(t.dir, 'heal', '--json').out)).toEqual({ ok: true, healed: [] });
  });

  // Last: it stops the cluster (the logs are written out as it stops).
  it('each JSON log line names its actor once (pino base and child bindings both wrote "actor")', () => {
    expect(cli(t.dir, 'down').code).toBe(0);
    const logs = ['node-1', 'replica-1', 'launcher'].map((name) => ({
      name,
      lines: readFileSync(join(t.dir, 'logs', `${name}.log`), 'utf8')
        .split('\n')
        .filter(Boolean),
    }));
    expect(logs.find((l) => l.name === 'replica-1')!.lines.length).toBeGreaterThan(0);
    for (const { name, lines } of logs) {
      for (const line of lines) {
        expect({ name, line, actors: line.match(/"actor":/g)?.length }).toEqual({ name, line, actors: 1 });
        if (name !== 'launcher') expect(JSON.parse(line)).toMatchObject({ actor: name });
      }
    }
  });
});

describe('up --store memory', () => {
  it('status says the cluster runs and takes no commands, as up says one runs (it said "no running cluster")', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir, ['--store', 'memory']);
      await until('the cluster', () => /memory store, one process/.test(u.out()));
      const s = cli(t.dir, 'status');
      expect(s.code).toBe(1);
      expect(s.err).not.toMatch(/no running cluster/);
      expect(s.err).toMatch(
        new RegExp(
          `^safe-resume status: the cluster in ${t.dir} \\(launcher pid ${u.proc.pid}\\) runs with --store memory`,
        ),
      );
      const j = JSON.parse(cli(t.dir, 'status', '--json').out) as { ok: boolean; code: string };
      expect(j).toMatchObject({ ok: false, code: 'NO_CONTROL' });
      expect(cli(t.dir, 'down')).toMatchObject({ code: 0 });
      expect(await u.exited).toBe(0);
    } finally {
      t.cleanup();
    }
  }, 60_000);
});

describe('sim --seed', () => {
  it('a clean seed prints the trace it promises: faults, every handle state, every resume granted or denied', () => {
    const r = spawnSync('node', [CLI, 'sim', '--seed', '1663'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^trace:$/m);
    expect(r.stdout).toMatch(/^ +\d+ms fault +fault=replica-crash/m);
    expect(r.stdout).toMatch(/^ +\d+ms state +.*to=paused/m);
    expect(r.stdout).toMatch(/^ +\d+ms grant /m);
    expect(r.stdout).toMatch(/^ +\d+ms deny /m);
    expect(r.stdout).toMatch(/all guarantees hold/);
  }, 60_000);
});

describe('the NBD export while every replica is down', () => {
  it('a client asking for an export is told at once that storage is unavailable (an NBD error with a message), not left to a bare EOF after 10 s', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir);
      await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(u.out()));
      expect(cli(t.dir, 'kill', 'replica-1').code).toBe(0);
      await until(
        'node-1 without a session',
        () =>
          (JSON.parse(cli(t.dir, 'status', '--json').out) as { nodes: Array<{ state: string }> }).nodes[0]?.state !==
          'connected',
      );
      const url = cli(t.dir, 'export', 'vm9.disk').out.trim();
      const started = Date.now();
      const q = spawnSync('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', url], { encoding: 'utf8', timeout: 30_000 });
      const tookMs = Date.now() - started;
      expect(q.stderr).toMatch(
        /server reported: storage is unavailable: node-1 has no session with any replica \(\w+\); connect again once a replica is back/,
      );
      expect(q.stderr).not.toMatch(/end-of-file/);
      expect(tookMs).toBeLessThan(8000);
      // libnbd hears the same reply to GO (its message is in the debug output), not a dead connection.
      const r = spawnSync('nbdinfo', [url], {
        encoding: 'utf8',
        timeout: 30_000,
        env: { ...process.env, LIBNBD_DEBUG: '1' },
      });
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/nbd_opt_go: server replied with error to opt_go request/);
      expect(r.stderr).toMatch(/server error message: storage is unavailable/);
      // Once the replica is back, the same export opens.
      expect(cli(t.dir, 'restart', 'replica-1').code).toBe(0);
      await until(
        'node-1 connected again',
        () =>
          (JSON.parse(cli(t.dir, 'status', '--json').out) as { nodes: Array<{ state: string }> }).nodes[0]?.state ===
          'connected',
      );
      expect(
        spawnSync('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 4k', '-c', 'read -P 7 0 4k', url], {
          encoding: 'utf8',
          timeout: 30_000,
        }).stdout,
      ).toMatch(/read 4096\/4096 bytes/);
      cli(t.dir, 'down');
    } finally {
      t.cleanup();
    }
  }, 90_000);
});
