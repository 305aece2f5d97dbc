/**
 * The NBD export of `safe-resume up` against another local Unix user and against its owner, with the
 * real clients: the export is a Unix socket in the data directory that only its owner reaches, and,
 * with --nbd-tcp, a TCP port that answers nothing before TLS; the owner with a pre-shared key from
 * `credentials nbd-psk` reads and writes through qemu-io, qemu-img and nbdinfo over TLS.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';
import { until as poll } from './e2e.js';

const t = tempDir();
// Everything above the data directory may be passed through: only safe-resume's own modes protect it.
chmodSync(t.dir, 0o711);
const dir = join(t.dir, 'c');
const user = `sr-nbd-${randomBytes(4).toString('hex')}`;
let uid = -1;
let gid = -1;
let launcher: ChildProcess | undefined;
let printed = '';

const cli = (...args: string[]) =>
  spawnSync('node', [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 30_000 });
/** Run a client as the other local user (no supplementary groups). */
const asOther = (cmd: string, args: string[]) =>
  spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', cmd, ...args], {
    encoding: 'utf8',
    timeout: 30_000,
    cwd: '/',
  });
const sh = (cmd: string, args: string[]) => spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
const both = (r: { stdout: string; stderr: string }) => `${r.stdout}${r.stderr}`;

/** `until` (test/e2e.ts), its timeout naming what up printed. */
const until = (what: string, check: () => boolean, ms = 30_000): Promise<void> =>
  poll(what, check, ms, { everyMs: 200, detail: () => `; up printed:\n${printed}` });

beforeAll(async () => {
  execFileSync('useradd', ['-M', '-s', '/usr/sbin/nologin', user]);
  uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
  gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
  launcher = spawn(
    'node',
    [CLI, 'up', '--dir', dir, '--replicas', '1', '--nodes', '1', '--apps', '1', '--nbd-tcp', '--interval-ms', '200'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  launcher.stdout!.on('data', (b: Buffer) => (printed += b.toString()));
  launcher.stderr!.on('data', (b: Buffer) => (printed += b.toString()));
  await until(
    'the NBD lines of up',
    () => /^ {2}nbd-tls /m.test(printed) && existsSync(join(dir, 'control.json')),
    60_000,
  );
}, 90_000);

afterAll(async () => {
  if (launcher && launcher.exitCode === null) {
    const gone = new Promise((r) => launcher!.once('exit', r));
    launcher.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 1500))]);
    if (launcher.exitCode === null) launcher.kill('SIGKILL');
  }
  spawnSync('userdel', [user]);
  t.cleanup();
}, 30_000);

describe('safe-resume up: the NBD export authenticates', () => {
  const socketUrl = () => /^ {2}nbd +(nbd\+unix:\/\/\/\?socket=(\S+))/m.exec(printed);
  const tlsPort = () => Number(/^ {2}nbd-tls +nbds:\/\/127\.0\.0\.1:(\d+)\//m.exec(printed)?.[1]);

  it('serves a Unix socket in <dir>/nbd (0700) and a TLS-only TCP port; export prints both', () => {
    const m = socketUrl();
    expect(m?.[2], printed).toBe(join(dir, 'nbd', 'node-1.sock'));
    expect(statSync(join(dir, 'nbd')).mode & 0o777).toBe(0o700);
    expect(statSync(m![2]!).isSocket()).toBe(true);
    expect(tlsPort()).toBeGreaterThan(0);
    const out = cli('export', 'vm 1.disk');
    expect(out.stdout.trim().split('\n')).toEqual([
      `nbd+unix:///vm%201.disk?socket=${m![2]}`,
      `nbds://127.0.0.1:${tlsPort()}/vm%201.disk`,
    ]);
  });

  it('the owner reads and writes over the socket; another local user reaches neither the socket nor, without the key, the TCP port', () => {
    const sock = socketUrl()![2]!;
    const own = sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 4k', `nbd+unix:///victim.disk?socket=${sock}`]);
    expect(own.stdout, both(own)).toMatch(/wrote 4096\/4096 bytes/);
    // The other user: the socket cannot be reached (the data directory and <dir>/nbd are the owner's).
    const io = asOther('qemu-io', [
      '-f',
      'raw',
      '-c',
      'read -P 0x42 0 4k',
      '-c',
      'write -P 0 0 4k',
      `nbd+unix:///victim.disk?socket=${sock}`,
    ]);
    expect(io.status).not.toBe(0);
    expect(both(io)).toMatch(/Permission denied/);
    expect(both(io)).not.toMatch(/read 4096|wrote 4096/);
    const info = asOther('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`]);
    expect(info.status).not.toBe(0);
    expect(both(info)).toMatch(/Permission denied/);
    // TCP without TLS: told TLS is required, nothing read, nothing listed.
    const tcp = asOther('qemu-io', [
      '-f',
      'raw',
      '-c',
      'read -P 0x42 0 4k',
      '-c',
      'write -P 0 0 4k',
      `nbd://127.0.0.1:${tlsPort()}/victim.disk`,
    ]);
    expect(tcp.status).not.toBe(0);
    expect(both(tcp)).toMatch(/TLS/);
    expect(both(tcp)).not.toMatch(/read 4096|wrote 4096/);
    const list = asOther('nbdinfo', ['--list', `nbd://127.0.0.1:${tlsPort()}/`]);
    expect(list.status).not.toBe(0);
    // The disk is as the owner wrote it.
    const back = sh('qemu-io', ['-f', 'raw', '-c', 'read -P 0x42 0 4k', `nbd+unix:///victim.disk?socket=${sock}`]);
    expect(back.stdout, both(back)).toMatch(/read 4096\/4096 bytes/);
    expect(back.stdout).not.toMatch(/verification failed/);
  }, 60_000);

  it('with the pre-shared key of principal default from credentials nbd-psk, the owner reads and writes over TLS with qemu-io, qemu-img and nbdinfo; a principal the node holds no credential for is refused', () => {
    const keys = join(t.dir, 'keys-default');
    const made = cli('credentials', 'nbd-psk', '--principal', 'default', '--out', keys);
    expect(made.status, both(made)).toBe(0);
    const file = join(keys, 'keys.psk');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, 'utf8')).toMatch(/^default:[0-9a-f]{64}\n$/);
    const creds = `tls-creds-psk,id=t0,endpoint=client,dir=${keys},username=default`;
    const opts = (target: string) =>
      `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${tlsPort()},export=${target},tls-creds=t0`;
    const io = sh('qemu-io', [
      '--object',
      creds,
      '--image-opts',
      opts('victim.disk'),
      '-c',
      'read -P 0x42 0 4k',
      '-c',
      'write -P 0x43 4k 4k',
      '-c',
      'read -P 0x43 4k 4k',
    ]);
    expect(io.stdout, both(io)).toMatch(
      /read 4096\/4096 bytes[\s\S]*wrote 4096\/4096 bytes[\s\S]*read 4096\/4096 bytes/,
    );
    expect(io.stdout).not.toMatch(/verification failed/);
    const img = sh('qemu-img', ['info', '--object', creds, '--image-opts', opts('victim.disk')]);
    expect(img.stdout, both(img)).toMatch(/virtual size: 64 MiB/);
    const out = join(keys, 'copy.raw');
    const conv = sh('qemu-img', ['convert', '--object', creds, '--image-opts', opts('victim.disk'), '-O', 'raw', out]);
    expect(conv.status, both(conv)).toBe(0);
    expect(readFileSync(out).subarray(0, 8192)).toEqual(
      Buffer.concat([Buffer.alloc(4096, 0x42), Buffer.alloc(4096, 0x43)]),
    );
    const info = sh('nbdinfo', ['--json', `nbds://default@127.0.0.1:${tlsPort()}/victim.disk?tls-psk-file=${file}`]);
    expect(JSON.parse(info.stdout || '{}'), both(info)).toMatchObject({
      exports: [{ 'export-size': 64 * 1024 * 1024 }],
    });
    // alice's key is a real one (from the cluster key), but node-1 holds only default's credential.
    const alice = join(t.dir, 'keys-alice');
    expect(cli('credentials', 'nbd-psk', '--principal', 'alice', '--out', alice).status).toBe(0);
    const refused = sh('qemu-io', [
      '--object',
      `tls-creds-psk,id=t0,endpoint=client,dir=${alice},username=alice`,
      '--image-opts',
      opts('victim.disk'),
      '-c',
      'read 0 4k',
    ]);
    expect(refused.status).not.toBe(0);
    expect(both(refused)).not.toMatch(/read 4096/);
    const log = readFileSync(join(dir, 'logs', 'node-1.log'), 'utf8');
    expect(log).toMatch(/"principal":"alice".*refused|refused.*"principal":"alice"/);
  }, 60_000);

  it('a --dir too long for the socket path is refused, saying so', () => {
    const long = join(t.dir, 'd'.repeat(120));
    const r = spawnSync('node', [CLI, 'up', '--dir', long, '--nodes', '1', '--replicas', '1'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/107 a Unix socket path may have: use a shorter --dir/);
  }, 60_000);
});
