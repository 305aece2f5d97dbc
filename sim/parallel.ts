/**
 * Seeds over worker threads: each seed is an independent, deterministic world, so a batch spreads
 * over the machine's cores. Each worker takes the next seed when it finishes one; the summary is
 * the same as one thread's (violations sorted by seed).
 */
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { addSeed, emptySummary, runSeeds, type SeedResult, type SimSummary } from './run.js';

export async function runSeedsParallel(
  first: number,
  count: number,
  workers = os.availableParallelism(),
  onResult?: (r: SeedResult) => void,
): Promise<SimSummary> {
  const n = Math.max(1, Math.min(workers, count));
  // The worker is the built file next to this one; run from sources (tests), stay in this thread.
  const script = new URL('./worker.js', import.meta.url);
  if (n === 1 || !import.meta.url.endsWith('.js')) return runSeeds(first, count, {}, onResult);
  const started = performance.now();
  const sum = emptySummary();
  let next = first;
  const end = first + count;
  await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<void>((resolve, reject) => {
          const w = new Worker(script);
          const feed = () => (next < end ? w.postMessage(next++) : void w.terminate().then(() => resolve()));
          w.on('message', (r: SeedResult) => {
            addSeed(sum, r);
            onResult?.(r);
            feed();
          });
          w.on('error', reject);
          w.on('exit', (code) =>
            next < end && code !== 0 ? reject(new Error(`simulation worker exited with code ${code}`)) : undefined,
          );
          feed();
        }),
    ),
  );
  sum.violations.sort((a, b) => a.seed - b.seed);
  sum.wallMs = Math.round(performance.now() - started);
  return sum;
}
