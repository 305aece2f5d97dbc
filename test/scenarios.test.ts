/**
 * Every file in test/scenarios/ is one test: its commands are played over the simulated world and
 * what they print must be what the file says. `UPDATE=1 npx vitest run test/scenarios.test.ts`
 * rewrites the files with what they print now, so a change of behaviour is a diff to review.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runScenario } from '../sim/scenario.js';

const dir = join(import.meta.dirname, 'scenarios');
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.txt'))
  .sort();
const update = process.env.UPDATE === '1';

describe('scenarios', () => {
  it('there are scenario files', () => {
    expect(files.length).toBeGreaterThan(0);
  });

  for (const file of files) {
    it(
      file,
      async () => {
        const path = join(dir, file);
        const text = readFileSync(path, 'utf8');
        expect(text.startsWith('#'), `${file} must start with a # comment saying what it proves`).toBe(true);
        const actual = await runScenario(text);
        if (update && actual !== text) writeFileSync(path, actual);
        else expect(actual).toBe(text);
      },
      60_000,
    );
  }
});
