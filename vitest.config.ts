import { defineConfig } from 'vitest/config';

/**
 * The seeded simulations keep every core busy by themselves (a worker thread per core): they run
 * first, one file at a time. Everything else runs after them, several files at once: the end-to-end
 * files mostly wait (on child processes, hold periods, timeouts), so they overlap well on two cores.
 */
const SIMULATIONS = ['test/sim-seeds-1.test.ts', 'test/sim-seeds-2.test.ts'];

export default defineConfig({
  test: {
    // Tests never rewrite files of the repository (the run fails if one changed).
    globalSetup: ['test/tracked-files.setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    projects: [
      { extends: true, test: { name: 'simulations', include: SIMULATIONS, maxWorkers: 1, sequence: { groupOrder: 1 } } },
      { extends: true, test: { name: 'tests', include: ['test/**/*.test.ts'], exclude: SIMULATIONS, maxWorkers: 3, sequence: { groupOrder: 2 } } },
    ],
  },
});
