/**
 * The local etcd of `safe-resume up --store etcd` takes only TLS clients with a certificate of its own
 * CA, made in the private data directory: a local user without that certificate (here with etcdctl,
 * curl, and as another Unix user) reads and writes nothing, while the cluster itself works as before.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../transport/ports.js';
import { etcdTls, MEMBER_NAME } from '../runtime/etcd-tls.js';
import { certMaker } from './certs.js';
import { tempDir, waitFor } from './helpers.js';
import { CLI } from './cli-path.js';

const t = tempDir();
// The parent may be entered by anyone: only the data directory's own modes keep others out.
chmodSync(t.dir, 0o755);
const d = join(t.dir, 'cluster');
const tls = (name: string) => join(d, 'etcd', 'tls', name);
const cli = (...args: string[]) =>
  spawnSync(process.execPath, [CLI, ...args, '--dir', d], { encoding: 'utf8', timeout: 30_000 });
const status = () =>
  JSON.parse(cli('status', '--json').stdout) as {
    etcd: Array<{ id: string; endpoint: string }>;
    handles: Array<{ state: string; acked: number }>;
  };

/** etcdctl (v3 API) with short timeouts, as `uid` if given. */
function etcdctl(args: string[], uid?: number): { status: number | null; out: string } {
  const argv = ['etcdctl', '--dial-timeout', '2s', '--command-timeout', '3s', ...args];
  const r =
    uid === undefined
      ? spawnSync(argv[0]!, argv.slice(1), {
          encoding: 'utf8',
          timeout: 20_000,
          env: { ...process.env, ETCDCTL_API: '3' },
        })
      : spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', ...argv], {
          encoding: 'utf8',
          timeout: 20_000,
          cwd: '/',
          env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ETCDCTL_API: '3' },
        });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/**
 * Each of `runs` (etcdctl's arguments, and the user to run it as) as `etcdctl` does, all at once: a
 * refused client waits out its timeouts, so the refusals wait side by side. The results in order.
 */
function etcdctlAll(
  runs: Array<{ args: string[]; uid?: number }>,
): Promise<Array<{ status: number | null; out: string }>> {
  return Promise.all(
    runs.map(({ args, uid }) => {
      const argv = ['etcdctl', '--dial-timeout', '2s', '--command-timeout', '3s', ...args];
      const p =
        uid === undefined
          ? spawn(argv[0]!, argv.slice(1), {
              stdio: ['ignore', 'pipe', 'pipe'],
              env: { ...process.env, ETCDCTL_API: '3' },
            })
          : spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', ...argv], {
              stdio: ['ignore', 'pipe', 'pipe'],
              cwd: '/',
              env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ETCDCTL_API: '3' },
            });
      let [stdout, stderr] = ['', ''];
      p.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
      p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const timer = setTimeout(() => p.kill('SIGTERM'), 20_000);
      return new Promise<{ status: number | null; out: string }>((resolve) =>
        p.once('close', (status) => (clearTimeout(timer), resolve({ status, out: `${stdout}${stderr}` }))),
      );
    }),
  );
}

let up: ChildProcess | undefined;
let out = '';
async function startUp(): Promise<void> {
  out = '';
  up = spawn(
    process.execPath,
    [
      CLI,
      'up',
      '--store',
      'etcd',
      '--dir',
      d,
      '--replicas',
      '1',
      '--nodes',
      '1',
      '--apps',
      '1',
      '--hold-ms',
      '1000',
      '--interval-ms',
      '50',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  up.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  up.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  await waitFor(`up (it said: ${out})`, () => existsSync(join(d, 'control.json')) || up!.exitCode !== null, 60_000);
  expect(up.exitCode, out).toBeNull();
}

describe('safe-resume up --store etcd: the local members require client certificates', () => {
  let endpoint = '';
  beforeAll(async () => {
    await startUp();
    endpoint = status().etcd[0]!.endpoint;
  }, 90_000);
  afterAll(async () => {
    const p = up;
    if (p && p.exitCode === null) {
      cli('down');
      await waitFor('the launcher to exit', () => p.exitCode !== null, 30_000).catch(() => p.kill('SIGKILL'));
    }
    t.cleanup();
  }, 60_000);

  it('the cluster works over them: the handles write, and a write and a read through the CLI', async () => {
    await waitFor(
      'the handle to write',
      () => status().handles.some((h) => h.state === 'active' && h.acked > 5),
      30_000,
    );
    expect(cli('write', 'tls.disk', 'over-tls').stdout).toMatch(/^wrote 8 bytes to tls.disk as cli /m);
    expect(cli('read', 'tls.disk').stdout).toMatch(/^over-tls/);
  }, 60_000);

  it("makes a CA, the members' certificate and the client certificate in the data directory, keys 0600 under 0700", () => {
    expect((statSync(join(d, 'etcd', 'tls')).mode & 0o777).toString(8)).toBe('700');
    for (const f of ['ca.crt', 'ca.key', 'member.crt', 'member.key', 'client.crt', 'client.key'])
      expect((statSync(tls(f)).mode & 0o777).toString(8), f).toBe('600');
    // No key in any process's command line.
    for (const f of ['ca.key', 'member.key', 'client.key'])
      expect(out).not.toContain(readFileSync(tls(f), 'utf8').split('\n')[1]!);
  });

  it('refuses a client without the certificate: plain http, https without a certificate, the CA alone', async () => {
    // A certificate of another CA, naming this address and made for clients, is no better.
    const other = certMaker(t.dir);
    other.ca('other-ca');
    other.cert('stranger', 'other-ca', 'IP:127.0.0.1');
    // With the client certificate (the cluster's own), etcd answers: it holds the targets.
    const own = etcdctl([
      '--endpoints',
      `https://${endpoint}`,
      '--cacert',
      tls('ca.crt'),
      '--cert',
      tls('client.crt'),
      '--key',
      tls('client.key'),
      'get',
      '--prefix',
      '',
      '--keys-only',
    ]);
    expect(own.status, own.out).toBe(0);
    expect(own.out).toContain('tls.disk');
    const refused: Array<{ args: string[] }> = [];
    for (const args of [
      ['--endpoints', `http://${endpoint}`],
      ['--endpoints', `https://${endpoint}`],
      ['--endpoints', `https://${endpoint}`, '--insecure-skip-tls-verify'],
      ['--endpoints', `https://${endpoint}`, '--cacert', tls('ca.crt')],
      [
        '--endpoints',
        `https://${endpoint}`,
        '--cacert',
        tls('ca.crt'),
        '--cert',
        join(t.dir, 'stranger.crt'),
        '--key',
        join(t.dir, 'stranger.key'),
      ],
    ]) {
      for (const op of args[1]!.startsWith('http:')
        ? [
            ['get', '--prefix', ''],
            ['put', 'x', 'y'],
            ['del', '--prefix', ''],
          ]
        : [
            ['get', '--prefix', ''],
            ['put', 'x', 'y'],
          ])
        refused.push({ args: [...args, ...op] });
    }
    for (const [i, r] of (await etcdctlAll(refused)).entries()) {
      expect(r.status, `${refused[i]!.args.join(' ')}: ${r.out}`).not.toBe(0);
    }
    // etcd's HTTP gateway, the same port.
    for (const url of [`http://${endpoint}/v3/kv/range`, `https://${endpoint}/v3/kv/range`]) {
      const c = spawnSync(
        'curl',
        ['-sS', '-m', '3', '--cacert', tls('ca.crt'), '-X', 'POST', '-d', '{"key":"AA==","range_end":"AA=="}', url],
        { encoding: 'utf8' },
      );
      expect(`${c.stdout}`, url).not.toContain('"kvs"');
      expect(c.status, `${url}: ${c.stdout}${c.stderr}`).not.toBe(0);
    }
  }, 120_000);

  it('another local user can neither read the certificates nor reach the members', async () => {
    const name = `sr-etcd-${randomBytes(4).toString('hex')}`;
    const add = spawnSync('useradd', ['-M', '-s', '/usr/sbin/nologin', name], { encoding: 'utf8' });
    expect(add.status, add.stderr).toBe(0);
    try {
      const uid = Number(spawnSync('id', ['-u', name], { encoding: 'utf8' }).stdout.trim());
      // That user can read what is open to all (the parent directory's files), so a refusal below is the data directory's.
      writeFileSync(join(t.dir, 'open.txt'), 'anyone\n', { mode: 0o644 });
      expect(
        spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'cat', join(t.dir, 'open.txt')], {
          encoding: 'utf8',
        }).stdout,
      ).toBe('anyone\n');
      for (const f of ['client.key', 'client.crt', 'ca.crt']) {
        const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'cat', tls(f)], {
          encoding: 'utf8',
        });
        expect(r.status, f).not.toBe(0);
        expect(r.stderr).toContain('Permission denied');
      }
      const refused: Array<{ args: string[]; uid: number }> = [];
      for (const args of [
        ['--endpoints', `http://${endpoint}`],
        ['--endpoints', `https://${endpoint}`, '--insecure-skip-tls-verify'],
        [
          '--endpoints',
          `https://${endpoint}`,
          '--cacert',
          tls('ca.crt'),
          '--cert',
          tls('client.crt'),
          '--key',
          tls('client.key'),
        ],
      ]) {
        for (const op of [
          ['get', '--prefix', ''],
          ['put', 'x', 'y'],
        ])
          refused.push({ args: [...args, ...op], uid });
      }
      for (const [i, r] of (await etcdctlAll(refused)).entries()) {
        expect(r.status, `${refused[i]!.args.join(' ')}: ${r.out}`).not.toBe(0);
      }
    } finally {
      spawnSync('userdel', [name]);
    }
  }, 120_000);

  it('safe-resume replica reaches the members with --etcd-ca, --etcd-cert and --etcd-key, and not without the certificate', async () => {
    const run = async (id: string, extra: string[]) => {
      const port = await freePort();
      const log = join(d, 'logs', `${id}.log`);
      const p = spawn(
        process.execPath,
        [
          CLI,
          'replica',
          '--id',
          id,
          '--store',
          `etcd://${endpoint}`,
          '--listen',
          `127.0.0.1:${port}`,
          '--dir',
          d,
          '--log',
          log,
          ...extra,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let said = '';
      p.stdout.on('data', (b: Buffer) => (said += b.toString()));
      p.stderr.on('data', (b: Buffer) => (said += b.toString()));
      try {
        await waitFor(`${id} to serve (${said})`, () => said.includes('serving') || p.exitCode !== null, 30_000);
        expect(said).toContain(`${id} serving`);
        return said;
      } finally {
        const gone = new Promise((r) => p.once('exit', r));
        if (p.exitCode === null) p.kill('SIGTERM');
        await gone;
        said += existsSync(log) ? readFileSync(log, 'utf8') : '';
      }
    };
    const withCert = await run('replica-x', [
      '--etcd-ca',
      tls('ca.crt'),
      '--etcd-cert',
      tls('client.crt'),
      '--etcd-key',
      tls('client.key'),
    ]);
    expect(withCert).toContain('(TLS)');
    expect(readFileSync(join(d, 'logs', 'replica-x.log'), 'utf8')).not.toContain('does not answer');
    await run('replica-y', ['--etcd-ca', tls('ca.crt')]);
    expect(readFileSync(join(d, 'logs', 'replica-y.log'), 'utf8')).toContain('the store does not answer yet');
  }, 120_000);

  it('a second up over the same directory starts the same members again (their ports kept), with the same certificates, and the data is there', async () => {
    const certBefore = readFileSync(tls('member.crt'), 'utf8');
    const p = up!;
    cli('down');
    await waitFor('the launcher to exit', () => p.exitCode !== null, 30_000);
    await startUp();
    expect(status().etcd[0]!.endpoint).toBe(endpoint);
    expect(readFileSync(tls('member.crt'), 'utf8')).toBe(certBefore);
    expect(cli('read', 'tls.disk').stdout).toMatch(/^over-tls/);
  }, 120_000);
});

describe('the local etcd certificates', () => {
  const u = tempDir();
  afterAll(() => u.cleanup());
  const read = (dir: string) =>
    Object.fromEntries(
      ['ca.crt', 'member.crt', 'member.key', 'client.crt', 'client.key'].map((f) => [
        f,
        readFileSync(join(dir, f), 'utf8'),
      ]),
    );

  it("are made once and kept; made again when one is missing or a member address is new; the members' names their addresses, the client's is a client's only", () => {
    const dir = join(u.dir, 'tls');
    const first = etcdTls(dir);
    expect(first.client).toEqual({
      caFile: join(dir, 'ca.crt'),
      certFile: join(dir, 'client.crt'),
      keyFile: join(dir, 'client.key'),
    });
    const made = read(dir);
    etcdTls(dir);
    expect(read(dir)).toEqual(made);
    const member = new X509Certificate(made['member.crt']!);
    expect(member.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(member.checkHost(MEMBER_NAME)).toBe(MEMBER_NAME);
    expect(member.verify(new X509Certificate(made['ca.crt']!).publicKey)).toBe(true);
    const client = new X509Certificate(made['client.crt']!);
    expect(client.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']); // clientAuth only: it cannot serve as a member
    expect(client.checkIP('127.0.0.1')).toBeUndefined();
    rmSync(join(dir, 'client.key'));
    etcdTls(dir);
    expect(read(dir)['ca.crt']).not.toBe(made['ca.crt']);
    expect(new X509Certificate(read(dir)['member.crt']!).checkIP('10.231.0.11')).toBeUndefined();
    etcdTls(dir, ['10.231.0.11', '10.231.0.12']);
    const moved = new X509Certificate(read(dir)['member.crt']!);
    expect([moved.checkIP('10.231.0.11'), moved.checkIP('10.231.0.12'), moved.checkIP('127.0.0.1')]).toEqual([
      '10.231.0.11',
      '10.231.0.12',
      '127.0.0.1',
    ]);
    expect(readdirSync(dir).sort()).toEqual([
      'ca.crt',
      'ca.key',
      'client.crt',
      'client.key',
      'member.crt',
      'member.key',
    ]);
  });
});
