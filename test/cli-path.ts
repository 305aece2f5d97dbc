import { join } from 'node:path';

/** The built command-line entry point every end-to-end test runs (`npm test` builds it first). */
export const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
