/** `down`: stop the running cluster and wait until every process is gone. */
import { join } from 'node:path';
import { readFileSync, rmSync } from 'node:fs';
import { dirHolder, isLauncher } from '../cluster/dir-lock.js';
import { EXIT, OperatorError } from '../runtime/operator-error.js';

/**
 * Stop the cluster in `dir` and, unless told not to, wait until its launcher (and so every process it
 * started) is gone. Nothing running is not an error: the cluster is down either way.
 */
export async function down(dir: string, json: boolean, wait: boolean): Promise<number> {
  const say = (out: Record<string, unknown>, line: string) =>
    process.stdout.write((json ? JSON.stringify(out) : line) + '\n');
  let control: { url: string; token: string; pid: number } | undefined;
  try {
    control = JSON.parse(readFileSync(join(dir, 'control.json'), 'utf8')) as {
      url: string;
      token: string;
      pid: number;
    };
  } catch {
    control = undefined;
  }
  const pid = dirHolder(dir)?.pid ?? (control && isLauncher(control.pid) ? control.pid : undefined);
  if (pid === undefined) {
    // A control.json left by a launcher that is gone says nothing runs: it goes too.
    if (control) rmSync(join(dir, 'control.json'), { force: true });
    say({ ok: true, running: false }, `no cluster is running in ${dir}`);
    return 0;
  }
  try {
    if (!control) throw new Error('no control endpoint yet');
    await fetch(control.url + '/down', {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${control.token}` },
      signal: AbortSignal.timeout(5000),
    });
  } catch {
    process.kill(pid, 'SIGTERM'); // still starting, or not answering: the signal stops it the same way
  }
  if (!wait) {
    say({ ok: true, running: true, stopping: true, pid }, `stopping the cluster in ${dir} (launcher pid ${pid})`);
    return 0;
  }
  const deadline = Date.now() + DOWN_WAIT_MS;
  while (isLauncher(pid)) {
    if (Date.now() > deadline)
      throw new OperatorError(
        `the launcher (pid ${pid}) did not stop within ${DOWN_WAIT_MS / 1000} s; stop it with 'kill -9 ${pid}'`,
        EXIT.timeout,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
  say(
    { ok: true, running: false, stopped: pid },
    `stopped the cluster in ${dir} (launcher pid ${pid} and every process it ran)`,
  );
  return 0;
}

/** How long `down` waits for the launcher to stop its processes (each child gets 5 s before SIGKILL). */
const DOWN_WAIT_MS = 30_000;
