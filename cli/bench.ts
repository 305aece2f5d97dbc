/** `bench`: the benchmarks, in a Node with --expose-gc. */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * `safe-resume bench` measures as `npm run bench` does: the heap figures need `--expose-gc`, so without
 * it the benchmarks run in a child Node with it (the same figures, not about 6,000 B per handle for 3,800).
 */
export async function benchCommand(argv: string[]): Promise<number> {
  if (typeof (globalThis as { gc?: unknown }).gc === 'function') return (await import('../bench/main.js')).bench(argv);
  const main = fileURLToPath(new URL('../bench/main.js', import.meta.url));
  const child = spawn(process.execPath, ['--expose-gc', main, ...argv], { stdio: 'inherit' });
  const stop = () => child.kill('SIGINT');
  process.once('SIGINT', stop);
  const code = await new Promise<number>((done) => child.once('exit', (c, sig) => done(c ?? (sig ? 130 : 1))));
  process.off('SIGINT', stop);
  return code;
}
