/** QEMU processes for the VM tests: no guest (`-S`, nothing boots), QMP on a fresh Unix socket. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, waitFor } from './helpers.js';

export const QEMU = '/usr/bin/qemu-system-x86_64';

export function requireQemu(): void {
  if (!existsSync(QEMU)) throw new Error(`${QEMU} missing: apt-get install -y qemu-system-x86`);
}

/** The `-blockdev`/`-device` arguments that attach NBD export `target` (at Unix socket `socket`) as an NVMe disk. */
export function nbdDisk(socket: string, target: string, node = 'd0'): string[] {
  return [
    '-blockdev',
    `driver=nbd,server.type=unix,server.path=${socket},export=${target},node-name=${node}`,
    '-device',
    `nvme,drive=${node},serial=${node}`,
  ];
}

/**
 * Start a QEMU with no guest, stopped before its first instruction (`prelaunch`), its QMP on a fresh
 * Unix socket (`at`, or one in a fresh directory). `cleanup` kills it (if still there) and removes the socket's directory.
 */
export async function bareQemu(
  extra: string[] = [],
  at?: string,
): Promise<{ qmpPath: string; proc: ChildProcess; exited: Promise<number | null>; cleanup: () => void }> {
  const t = tempDir();
  const qmpPath = at ?? join(t.dir, 'qmp.sock');
  const args = ['-machine', 'q35', '-accel', 'tcg', '-m', '64', '-nodefaults', '-display', 'none', '-S'];
  const proc = spawn(QEMU, [...args, '-qmp', `unix:${qmpPath},server=on,wait=off`, ...extra], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const cleanup = () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    t.cleanup();
  };
  try {
    await waitFor('QEMU to listen on its QMP socket', () => existsSync(qmpPath) || proc.exitCode !== null, 15_000);
    if (proc.exitCode !== null) throw new Error(`QEMU exited with ${proc.exitCode}: ${stderr}`);
  } catch (err) {
    cleanup();
    throw err;
  }
  return { qmpPath, proc, exited, cleanup };
}
