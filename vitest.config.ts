import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * The seeded simulations keep every core busy by themselves (a worker thread per core): they run
 * first, one file at a time. Everything else runs after them, several files at once: the end-to-end
 * files mostly wait (on child processes, hold periods, timeouts), so they overlap well on two cores.
 */
const SIMULATIONS = ['test/sim-seeds-1.test.ts', 'test/sim-seeds-2.test.ts'];

/**
 * The files that take longest (real clusters, the browser, etcd members, the benchmark) start first,
 * so that the run does not end waiting on one of them; vitest's own order (the last run's durations,
 * or file sizes on a fresh clone) decides among them and among the rest.
 */
class LongFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const long = (f: TestSpecification) =>
      /\.(e2e|browser)\.test\.ts$|store\.contract\.test\.ts$|bench\.smoke\.test\.ts$/.test(f.moduleId);
    return [...sorted.filter(long), ...sorted.filter((f) => !long(f))];
  }
}

export default defineConfig({
  test: {
    // Tests never rewrite files of the repository (the run fails if one changed).
    globalSetup: ['test/tracked-files.setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    sequence: { sequencer: LongFirst },
    projects: [
      {
        extends: true,
        test: { name: 'simulations', include: SIMULATIONS, maxWorkers: 1, sequence: { groupOrder: 1 } },
      },
      {
        extends: true,
        test: {
          name: 'tests',
          include: ['test/**/*.test.ts'],
          exclude: SIMULATIONS,
          maxWorkers: 3,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
