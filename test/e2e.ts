/**
 * What the end-to-end files share: waiting for a condition, and the CLI started as a child process
 * whose output is kept (`safe-resume up` most often). The built entry point is test/cli-path.ts's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { CLI } from './cli-path.js';

/**
 * Poll `check` every `everyMs` until it returns true; after `ms`, throw "timed out waiting for
 * `what`" followed by `detail()` (what the process printed, the cluster's status, ...). A check that
 * itself takes long (one that runs the CLI costs a node process start) waits as long again before
 * the next: polling keeps at most half a core busy while the files run side by side.
 */
export async function until(
  what: string,
  check: () => boolean,
  ms = 30_000,
  opts: { everyMs?: number; detail?: () => string } = {},
): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const started = Date.now();
    if (check()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${opts.detail?.() ?? ''}`);
    await new Promise((r) => setTimeout(r, Math.max(opts.everyMs ?? 100, Date.now() - started)));
  }
}

/** A CLI command running as a child: what it printed so far, and how it ended. */
export interface Launched {
  proc: ChildProcess;
  /** Its stdout so far. */
  out: () => string;
  /** Its stderr so far. */
  err: () => string;
  /** stdout and stderr so far, in the order they arrived. */
  both: () => string;
  /** Its exit: code, signal, and when (Date.now()). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

/**
 * Start `node CLI ...args`, its output kept. `detached` gives it a process group of its own, as a
 * shell gives a command (a Ctrl-C to the group signals every process of it). It is in `running`
 * until it exits, for an afterEach/afterAll to kill what a failed test left behind.
 */
export function launch(
  args: string[],
  opts: { running?: Set<ChildProcess>; detached?: boolean; env?: NodeJS.ProcessEnv } = {},
): Launched {
  const proc = spawn(process.execPath, [CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: opts.detached ?? false,
    env: opts.env ?? process.env,
  });
  opts.running?.add(proc);
  let out = '';
  let err = '';
  let both = '';
  proc.stdout.on('data', (b: Buffer) => ((out += b.toString()), (both += b.toString())));
  proc.stderr.on('data', (b: Buffer) => ((err += b.toString()), (both += b.toString())));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((r) =>
    proc.once('exit', (code, signal) => (opts.running?.delete(proc), r({ code, signal, at: Date.now() }))),
  );
  return { proc, out: () => out, err: () => err, both: () => both, exited };
}
