/**
 * One cluster per data directory. `up` takes `launcher.lock` (created exclusively, holding its pid);
 * a second `up` finds it held by a live launcher and refuses, naming it. A lock left by a launcher that
 * died (its pid gone, or now another program's) is taken over.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EXIT, OperatorError } from '../runtime/operator-error.js';

export const LOCK_FILE = 'launcher.lock';

interface LockContent {
  pid: number;
  started: string;
  /** `memory` for `up --store memory`: the cluster runs in the launcher, with no control endpoint. */
  store?: string;
}

/** The running launcher that holds `dir`, if any. */
export function dirHolder(dir: string): LockContent | undefined {
  let held: LockContent;
  try {
    held = JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')) as LockContent;
  } catch {
    return undefined;
  }
  return Number.isSafeInteger(held.pid) && held.pid !== process.pid && isLauncher(held.pid) ? held : undefined;
}

/** Take `dir` for this process; throws an OperatorError naming the launcher that has it. Returns the release. */
export function lockDir(dir: string, store?: string): () => void {
  const path = join(dir, LOCK_FILE);
  const mine =
    JSON.stringify({
      pid: process.pid,
      started: new Date().toISOString(),
      ...(store ? { store } : {}),
    } satisfies LockContent) + '\n';
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(path, mine, { flag: 'wx', mode: 0o600 });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
      const holder = dirHolder(dir);
      if (holder) {
        throw new OperatorError(
          `a cluster is already running in ${dir} (launcher pid ${holder.pid}, up since ${holder.started}); stop it with 'safe-resume down --dir ${dir}', or use another --dir`,
          EXIT.dirInUse,
        );
      }
      rmSync(path, { force: true }); // left by a launcher that is gone
    }
  }
  return () => {
    try {
      if ((JSON.parse(readFileSync(path, 'utf8')) as LockContent).pid === process.pid) rmSync(path, { force: true });
    } catch {
      // gone already
    }
  };
}

/** Whether `pid` is alive and a safe-resume launcher (on Linux, by its command line; elsewhere, alive). */
export function isLauncher(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return (
      argv.some((a) => a.endsWith('cli.js') || a.endsWith('/cli/main.js') || a.endsWith('safe-resume')) &&
      argv.includes('up')
    );
  } catch {
    return true;
  }
}
