/** The node-local record of requestIds: what a restarted agent finds on disk. */
import { appendFileSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileKeptIds, nodeDisk, type KeptDisk, type KeptHandle } from '../actors/kept.js';
import { tempDir } from './helpers.js';

const handle = (i: number, app = 'app'): KeptHandle => ({
  app,
  target: `disk-${i}`,
  requestId: `r${String(i).padStart(24, '0')}`,
  principal: 'p',
  mode: 'write',
  version: 0,
  instance: 'instance-1',
});

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
    expect(
      b
        .list()
        .map((h) => h.target)
        .sort(),
    ).toEqual(['disk-1', 'disk-3']);
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
    expect(
      b
        .list()
        .map((h) => h.target)
        .sort(),
    ).toEqual(['disk-1', 'disk-2']);
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
  }, 60_000); // ten thousand fsyncs

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

/** nodeDisk, counting what reached the disk: which paths were written and which were fsynced. */
function countingDisk(): { disk: KeptDisk; calls: string[] } {
  const calls: string[] = [];
  const fds = new Map<number, string>();
  const disk: KeptDisk = {
    ...nodeDisk,
    writeFile: (path, text) => (calls.push(`writeFile ${path}`), nodeDisk.writeFile(path, text)),
    openAppend: (path) => {
      const fd = nodeDisk.openAppend(path);
      fds.set(fd, path);
      return fd;
    },
    append: (fd, text) => (calls.push(`append ${fds.get(fd)}`), nodeDisk.append(fd, text)),
    fsync: (fd) => (calls.push(`fsync ${fds.get(fd)}`), nodeDisk.fsync(fd)),
    fsyncPath: (path) => (calls.push(`fsync ${path}`), nodeDisk.fsyncPath(path)),
    fsyncDir: (d) => (calls.push(`fsyncDir ${d}`), nodeDisk.fsyncDir(d)),
    rename: (from, to) => (calls.push(`rename ${from} ${to}`), nodeDisk.rename(from, to)),
  };
  return { disk, calls };
}

describe('FileKeptIds on the real disk: acknowledged means fsynced', () => {
  it('every append is fsynced before put, putMany, remove or apply returns', () => {
    const d = dir();
    const { disk, calls } = countingDisk();
    const a = new FileKeptIds(d, 'node-1', disk);
    const log = a.path;
    const steps: Array<() => void> = [
      () => a.put(handle(1)),
      () => a.putMany([handle(2), handle(3)]),
      () => a.remove(handle(2).requestId),
      () => a.apply({ put: [handle(4)], remove: [handle(1).requestId] }),
    ];
    for (const step of steps) {
      calls.length = 0;
      step();
      // One write and one fsync per call, the fsync last: nothing is acknowledged from the page cache.
      expect(calls).toEqual([`append ${log}`, `fsync ${log}`]);
    }
    a.close();
  });

  it('a compacted log is fsynced before it is renamed over, and the directory after the rename', () => {
    const d = dir();
    const { disk, calls } = countingDisk();
    const a = new FileKeptIds(d, 'node-1', disk);
    const log = a.path;
    const tmp = `${log}.tmp`;
    // Opening writes a fresh log: the file is created durably, directory entry included.
    expect(calls).toEqual([`writeFile ${tmp}`, `fsync ${tmp}`, `rename ${tmp} ${log}`, `fsyncDir ${d}`]);
    calls.length = 0;
    for (let i = 0; i < 1200; i++) {
      a.put(handle(i));
      a.remove(handle(i).requestId);
    }
    const compactions = calls.flatMap((c, i) => (c === `writeFile ${tmp}` ? [i] : []));
    expect(compactions.length).toBeGreaterThan(0);
    for (const i of compactions)
      expect(calls.slice(i, i + 4)).toEqual([
        `writeFile ${tmp}`,
        `fsync ${tmp}`,
        `rename ${tmp} ${log}`,
        `fsyncDir ${d}`,
      ]);
    a.close();
    expect(new FileKeptIds(d, 'node-1').list()).toEqual([]);
  }, 60_000);

  it('keeps the file from other users: a directory it creates is 0700, the log 0600', () => {
    const d = join(dir(), 'data', 'kept');
    const a = new FileKeptIds(d, 'node-1');
    a.put(handle(1));
    a.close();
    expect(statSync(d).mode & 0o777).toBe(0o700);
    expect(statSync(join(d, '..')).mode & 0o777).toBe(0o700);
    expect(statSync(a.path).mode & 0o777).toBe(0o600);
  });
});
