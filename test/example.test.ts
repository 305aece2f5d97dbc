/** The README's example program runs, and the README shows it as it is. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { main } from '../examples/quickstart.js';

describe('README example', () => {
  it('opens, writes, survives a replica kill, resumes and reads back', async () => {
    const lines: string[] = [];
    const text = await main((l) => lines.push(l));
    expect(text).toBe('hello, world');
    expect(lines[0]).toMatch(/^paused/);
    expect(lines[1]).toMatch(/^resumed with the same requestId [A-Za-z0-9_-]{21}$/);
    expect(lines.at(-1)).toBe('read back "hello, world", handle active');
  });

  it('is quoted verbatim in the README', () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const source = readFileSync(new URL('../examples/quickstart.ts', import.meta.url), 'utf8');
    const body = source.slice(0, source.indexOf('\nif (process.argv[1]'));
    expect(readme).toContain(body.trim());
  });
});
