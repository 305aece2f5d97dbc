/** A storage replica in its own process, as the benchmarks (and the tests that share their setups) start it. */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../transport/ports.js';

// This file runs from dist/bench (npm run bench) or bench/ (the tests).
const HERE = fileURLToPath(new URL('.', import.meta.url));
export const ROOT = join(HERE, HERE.includes(`${join('dist', 'bench')}`) ? '../..' : '..');
const CHILD = join(ROOT, 'dist', 'cluster', 'child.js');
/** The cluster key of every replica started here; node agents derive their credentials from it. */
export const SECRET = 'benchmark-secret-benchmark-secret';

/** A replica in its own process (as in a real cluster), over memory, the SQLite file in `dir`, or an etcd (`etcd://...`). */
export async function replicaProcess(
  dir: string,
  store: 'memory' | 'sqlite' | `etcd://${string}`,
  opts: { holdMs?: number; groupCommit?: boolean; heartbeatIntervalMs?: number } = {},
): Promise<{ id: string; url: string; proc: ChildProcess }> {
  const port = await freePort();
  const id = `replica-${port}`;
  const cfg = {
    id,
    port,
    dir,
    store: store === 'sqlite' ? `sqlite:${join(dir, 'store.sqlite')}` : store,
    secret: SECRET,
    holdMs: opts.holdMs ?? 5000,
    history: false,
    pretty: false,
    groupCommit: opts.groupCommit ?? true,
    ...(opts.heartbeatIntervalMs ? { heartbeatIntervalMs: opts.heartbeatIntervalMs } : {}),
  };
  const proc = fork(CHILD, ['replica'], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  proc.send({ type: 'config', config: cfg });
  await new Promise<void>((resolve, reject) => {
    proc.on('message', (m) => (m as { type?: string }).type === 'ready' && resolve());
    proc.once('exit', () => reject(new Error('replica process exited')));
  });
  return { id, url: `ws://127.0.0.1:${port}`, proc };
}
