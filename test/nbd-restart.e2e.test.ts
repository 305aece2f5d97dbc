/**
 * A block client that reconnects (QEMU's `reconnect-delay`) rides through its node agent's process
 * being SIGKILLed and started again: the export's new process takes the write handle once the dead process's lock has lapsed
 * (the hold period), and every write lands.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir, waitFor } from './helpers.js';
import { CLI } from './cli-path.js';

const t = tempDir();
const dir = join(t.dir, 'c');
let launcher: ChildProcess | undefined;
let socket = '';

beforeAll(async () => {
  // The default hold period (5 s): longer than a client's first write after the restart takes to come.
  launcher = spawn('node', [CLI, 'up', '--dir', dir, '--replicas', '2', '--nodes', '1', '--apps', '1'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  launcher.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor(
    `up to print its NBD socket (it said: ${out})`,
    () => /^ {2}nbd +nbd\+unix:\/\/\/\?socket=(\S+)/m.test(out) || launcher!.exitCode !== null,
    60_000,
  );
  socket = /^ {2}nbd +nbd\+unix:\/\/\/\?socket=(\S+)/m.exec(out)![1]!;
}, 90_000);

afterAll(async () => {
  if (launcher && launcher.exitCode === null) {
    launcher.kill('SIGINT');
    await new Promise((r) => launcher!.once('exit', r));
  }
  t.cleanup();
});

describe('an NBD client with reconnect-delay through a node-agent restart', () => {
  it('20 writes, 0.5 s apart, with node-1 SIGKILLed and started again after the fourth: every write succeeds and reads back', async () => {
    const n = 20;
    const cmds = Array.from({ length: n }, (_, i) => [`write -P ${i + 1} ${i * 4096} 4k`, 'sleep 500']).flat();
    const opts = `driver=nbd,server.type=unix,server.path=${socket},export=ride.disk,reconnect-delay=20`;
    const io = spawn('qemu-io', ['--image-opts', opts, ...cmds.flatMap((c) => ['-c', c])], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    io.stdout.on('data', (d: Buffer) => (out += d.toString()));
    io.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => io.once('exit', (code) => r(code)));
    await waitFor('the fourth write', () => (out.match(/wrote 4096\/4096 bytes/g) ?? []).length >= 4, 20_000);
    // SIGKILLed: its write lock is not released but held for the hold period; then started again at once.
    for (const cmd of ['kill', 'restart']) {
      const r = spawnSync('node', [CLI, cmd, 'node-1', '--dir', dir], { encoding: 'utf8', timeout: 30_000 });
      expect(r.status, r.stderr).toBe(0);
    }
    expect(await exited, out).toBe(0);
    expect(out).not.toMatch(/error|failed/i);
    expect(out.match(/wrote 4096\/4096 bytes/g)).toHaveLength(n);
    const reads = Array.from({ length: n }, (_, i) => `read -P ${i + 1} ${i * 4096} 4k`);
    const back = spawnSync(
      'qemu-io',
      ['-r', '--image-opts', opts.replace(',reconnect-delay=20', ''), ...reads.flatMap((c) => ['-c', c])],
      { encoding: 'utf8', timeout: 30_000 },
    );
    expect(`${back.stdout}${back.stderr}`).not.toMatch(/error|failed|mismatch/i);
    expect(back.stdout.match(/read 4096\/4096 bytes/g)).toHaveLength(n);
  }, 90_000);
});
