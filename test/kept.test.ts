/** The node-local record of requestIds: what a restarted agent finds on disk. */
import { appendFileSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileKeptIds, type KeptHandle } from '../actors/kept.js';
import { tempDir } from './helpers.js';

const handle = (i: number, app = 'app'): KeptHandle => ({ app, target: `disk-${i}`, requestId: `r${String(i).padStart(24, '0')}`, principal: 'p', mode: 'write', version: 0, instance: 'instance-1' });

let cleanup: () => void = () => undefined;
afterEach(() => cleanup());
function dir(): string {
  const t = tempDir();
  cleanup = t.cleanup;
  return t.dir;
}

describe('FileKeptIds', () => {
  it('a reopened record holds what was put and not what was removed', () => {
    const d = dir();
    const a = new FileKeptIds(d, 'node-1');
    a.putMany([handle(1), handle(2), handle(3)]);
    a.remove(handle(2).requestId);
    a.put({ ...handle(3), instance: 'instance-2' });
    a.close();
    const b = new FileKeptIds(d, 'node-1');
    expect(b.list().map((h) => h.target).sort()).toEqual(['disk-1', 'disk-3']);
    expect(b.find('app', 'disk-3')?.instance).toBe('instance-2');
    expect(b.find('app', 'disk-2')).toBeUndefined();
    expect(b.find('other', 'disk-1')).toBeUndefined();
    b.close();
  });

  it('a last line cut short by a crash is ignored; the changes before it are kept', () => {
    const d = dir();
    const a = new FileKeptIds(d, 'node-1');
    a.putMany([handle(1), handle(2)]);
    a.close();
    appendFileSync(a.path, '{"put":{"app":"app","tar');
    const b = new FileKeptIds(d, 'node-1');
    expect(b.list().map((h) => h.target).sort()).toEqual(['disk-1', 'disk-2']);
    b.put(handle(4));
    b.close();
    expect(new FileKeptIds(d, 'node-1').list()).toHaveLength(3);
  });

  it('a damaged line in the middle is a clear error, not a silently shorter record', () => {
    const d = dir();
    const a = new FileKeptIds(d, 'node-1');
    a.putMany([handle(1)]);
    a.close();
    writeFileSync(a.path, `garbage\n${readFileSync(a.path, 'utf8')}`);
    expect(() => new FileKeptIds(d, 'node-1')).toThrow(/line 1 is not JSON/);
  });

  it('stays small under churn: stale lines are compacted away', () => {
    const d = dir();
    const a = new FileKeptIds(d, 'node-1');
    for (let i = 0; i < 5000; i++) {
      a.put(handle(i));
      if (i >= 10) a.remove(handle(i - 10).requestId);
    }
    expect(statSync(a.path).size).toBeLessThan(300 * 1000);
    a.close();
    expect(new FileKeptIds(d, 'node-1').list().map((h) => h.target)).toHaveLength(10);
  });

  it('reads the earlier one-JSON-array file and moves it to the log', () => {
    const d = dir();
    writeFileSync(join(d, 'node-1.handles.json'), JSON.stringify([handle(7), handle(8)]));
    const a = new FileKeptIds(d, 'node-1');
    expect(a.find('app', 'disk-8')?.requestId).toBe(handle(8).requestId);
    a.close();
    expect(existsSync(join(d, 'node-1.handles.json'))).toBe(false);
    expect(new FileKeptIds(d, 'node-1').list()).toHaveLength(2);
  });
});
