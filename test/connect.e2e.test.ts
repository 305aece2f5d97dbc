/**
 * A node that cannot reach its storage, as an operator meets it through the built CLI: `up` fails in
 * one line with the cause (and leaves nothing running), `status` shows a reconnecting node's cause,
 * and the node's log says when its handles paused, why, and each failed attempt.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { certMaker } from './certs.js';
import { CLI } from './cli-path.js';
import { launch, until } from './e2e.js';

const running = new Set<ChildProcess>();
afterEach(() => {
  for (const p of running) p.kill('SIGKILL');
});

/** `safe-resume up` with one replica, one node, one application; its processes carry `mark` in their environment. */
function up(dir: string, mark: string, extra: string[] = []) {
  const u = launch(['up', '--dir', dir, '--replicas', '1', '--nodes', '1', '--apps', '1', ...extra], {
    running,
    env: { ...process.env, SAFE_RESUME_TEST_MARK: mark },
  });
  return { ...u, exited: u.exited.then((e) => e.code) };
}

function cli(dir: string, ...args: string[]) {
  const r = spawnSync('node', [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Processes still running with `mark` in their environment (the launcher and every child it forked). */
function marked(mark: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (
        readFileSync(`/proc/${p}/environ`, 'utf8').includes(`SAFE_RESUME_TEST_MARK=${mark}`) &&
        !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${p}/stat`, 'utf8'))
      )
        pids.push(Number(p));
    } catch {
      // gone, or not ours
    }
  }
  return pids;
}

const logLines = (dir: string, id: string) =>
  readFileSync(join(dir, 'logs', `${id}.log`), 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as Record<string, unknown> & { msg: string; level: number });

describe('a node that cannot reach its storage, through the CLI', () => {
  it("up --tls-cert with a certificate for another name: up fails in one line with the TLS cause (exit 8), nothing left running, the node's log has each failed attempt", async () => {
    const t = tempDir();
    try {
      const pki = join(t.dir, 'pki');
      mkdirSync(pki);
      const certs = certMaker(pki);
      certs.ca('ca');
      certs.cert('elsewhere', 'ca', 'DNS:elsewhere.example,IP:10.9.9.9');
      // A directory that was there before: a failed up removes only one it made, so the logs stay to be read.
      const dir = join(t.dir, 'c');
      mkdirSync(dir, { mode: 0o700 });
      const mark = randomUUID();
      const u = up(dir, mark, [
        '--tls-cert',
        join(pki, 'elsewhere.crt'),
        '--tls-key',
        join(pki, 'elsewhere.key'),
        '--tls-ca',
        join(pki, 'ca.crt'),
      ]);
      const code = await Promise.race([u.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 45_000))]);
      expect(code).toBe(8);
      const said = u.err().trim().split('\n');
      expect(said).toHaveLength(1);
      expect(said[0]).toMatch(
        /^safe-resume: node node-1 could not connect to any replica within 10000 ms: ERR_TLS_CERT_ALTNAME_INVALID from replica-1 \(wss:\/\/127\.0\.0\.1:\d+\): the server's certificate does not name this host/,
      );
      // It never said the cluster was up.
      expect(u.out()).not.toMatch(/control|inspector/);
      expect(existsSync(join(dir, 'control.json'))).toBe(false);
      expect(existsSync(join(dir, 'launcher.lock'))).toBe(false);
      await until('every process of the cluster to be gone', () => marked(mark).length === 0, 10_000);
      const failed = logLines(dir, 'node-1').filter((l) => l.msg.startsWith('could not connect'));
      expect(failed.length).toBeGreaterThan(0);
      expect(failed[0]).toMatchObject({ level: 40, cause: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    } finally {
      t.cleanup();
    }
  }, 60_000);

  it("a replica killed under a running cluster: status shows the node's cause, and its log says the handles paused and why, then each failed attempt", async () => {
    const t = tempDir();
    const dir = join(t.dir, 'c');
    const mark = randomUUID();
    const u = up(dir, mark, ['--interval-ms', '50']);
    try {
      await until('the cluster', () => existsSync(join(dir, 'control.json')) && /inspector/.test(u.out()));
      const st = () =>
        JSON.parse(cli(dir, 'status', '--json').out) as {
          nodes: Array<{ id: string; state: string; cause: string | null }>;
          handles: Array<{ state: string; acked: number }>;
        };
      await until('a write', () => st().handles.some((h) => h.state === 'active' && h.acked > 0));
      expect(st().nodes[0]!.cause).toBeNull();
      expect(cli(dir, 'kill', 'replica-1').code).toBe(0);
      await until('the node to say why it is not connected', () => st().nodes[0]!.cause !== null, 15_000);
      const node = st().nodes[0]!;
      expect(node.state).not.toBe('connected');
      expect(node.cause).toMatch(/^[A-Z_]+ from replica-1 \(ws:\/\/127\.0\.0\.1:\d+\): /);
      const text = cli(dir, 'status').out;
      expect(text).toMatch(/^node-1 +\S+ +on - +cause: [A-Z_]+ from replica-1/m);
      await until(
        'a failed attempt in the log',
        () => logLines(dir, 'node-1').some((l) => l.msg.startsWith('could not connect')),
        10_000,
      );
      const lines = logLines(dir, 'node-1');
      const paused = lines.filter((l) => l.msg === 'handles paused');
      expect(paused).toHaveLength(1);
      expect(paused[0]).toMatchObject({ level: 30, actor: 'node-1', paused: 1 });
      expect(String(paused[0]!.why)).toMatch(/^socket closed/);
      expect(lines.findIndex((l) => l.msg === 'handles paused')).toBeLessThan(
        lines.findIndex((l) => l.msg.startsWith('could not connect')),
      );
      // Back: the resume batch is logged too, and status shows no cause.
      expect(cli(dir, 'restart', 'replica-1').code).toBe(0);
      await until('the resume', () => logLines(dir, 'node-1').some((l) => l.msg === 'handles resumed'), 20_000);
      await until(
        'no cause once connected',
        () => st().nodes[0]!.state === 'connected' && st().nodes[0]!.cause === null,
        10_000,
      );
      expect(cli(dir, 'down').code).toBe(0);
      await u.exited;
    } finally {
      t.cleanup();
    }
  }, 120_000);
});
