import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Tests never rewrite files of the repository (the run fails if one changed).
    globalSetup: ['test/tracked-files.setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
