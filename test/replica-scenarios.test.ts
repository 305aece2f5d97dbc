/**
 * Every file in test/replica-scenarios/ is one test: its commands drive the replica's pure core
 * (core/replica.ts) without sockets, store or clock (sim/replica-scenario.ts), and the intents it
 * returns must be the ones the file says; a mismatch shows the diff. `UPDATE=1 npx vitest run
 * test/replica-scenarios.test.ts` rewrites the files with what they print now, to review.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { playReplicaScenario } from '../sim/replica-scenario.js';

const dir = join(import.meta.dirname, 'replica-scenarios');
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.txt'))
  .sort();
const update = process.env.UPDATE === '1';

describe('replica scenarios', () => {
  it('there are replica scenario files', () => {
    expect(files.length).toBeGreaterThan(0);
  });

  for (const file of files) {
    it(file, () => {
      const path = join(dir, file);
      const text = readFileSync(path, 'utf8');
      expect(text.startsWith('#'), `${file} must start with a # comment saying what it shows`).toBe(true);
      const actual = playReplicaScenario(text);
      if (update && actual !== text) writeFileSync(path, actual);
      else expect(actual).toBe(text);
    });
  }
});
