/**
 * A test run leaves the repository as it found it: every tracked file the tests could write (the
 * README's pictures, the benchmark results, the docs) has the same bytes after the run as before.
 * The inspector's picture may change only when asked for (SAFE_RESUME_DOCS_SCREENSHOT=1), the
 * scenario files only when they are being rewritten (UPDATE=1, see test/scenarios.test.ts).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..');

function tracked(): Map<string, string> {
  const files = new Map<string, string>();
  if (!existsSync(join(ROOT, '.git'))) return files; // not a clone (an unpacked archive): nothing to compare
  let list: string[];
  try {
    list = execFileSync('git', ['ls-files', '-z'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean);
  } catch {
    return files; // no git to list them: nothing to compare
  }
  for (const f of list) {
    const path = join(ROOT, f);
    files.set(f, existsSync(path) ? createHash('sha256').update(readFileSync(path)).digest('hex') : 'absent');
  }
  return files;
}

export default function setup(): () => void {
  const before = tracked();
  return () => {
    const after = tracked();
    const allowed = (f: string) =>
      (process.env.SAFE_RESUME_DOCS_SCREENSHOT === '1' && f === 'docs/inspector.png') ||
      (process.env.UPDATE === '1' && f.startsWith('test/scenarios/'));
    const changed = [...before].filter(([f, h]) => after.get(f) !== h && !allowed(f)).map(([f]) => f);
    if (changed.length === 0) return;
    // vitest reports an error thrown here but exits 0: the exit code is set as well.
    process.exitCode = 1;
    throw new Error(`the test run changed tracked files: ${changed.join(', ')}`);
  };
}
