/**
 * The node-local requestId file on the simulated disk: power loss, torn writes and disk errors.
 * Acknowledged (the call returned) must mean durable; a failed call must leave no trace in the view.
 */
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../actors/env.js';
import { FileKeptIds, type KeptChanges, type KeptDisk, type KeptHandle } from '../actors/kept.js';
import { SimDisk } from '../sim/disk.js';

const DIR = '/data/kept';
const handle = (i: number, instance = 'instance-1'): KeptHandle => ({
  app: `app-${i % 3}`,
  target: `disk-${i}`,
  requestId: `r${String(i).padStart(24, '0')}`,
  principal: 'p',
  mode: 'write',
  version: 0,
  instance,
});

/** The project's one seeded random, so every run draws the same numbers. */
const seeded = seededRandom;

/** What the file must hold: the acknowledged changes, applied in order. */
class Model {
  readonly byId = new Map<string, KeptHandle>();
  apply(c: KeptChanges): void {
    for (const h of c.put) this.byId.set(h.requestId, h);
    for (const id of c.remove) this.byId.delete(id);
  }
  clone(): Model {
    const m = new Model();
    for (const [id, h] of this.byId) m.byId.set(id, h);
    return m;
  }
  sorted(): KeptHandle[] {
    return sortedById([...this.byId.values()]);
  }
}
const sortedById = (hs: KeptHandle[]) =>
  [...hs].sort((a, b) => (a.requestId < b.requestId ? -1 : a.requestId > b.requestId ? 1 : 0));
const reopened = (disk: KeptDisk) => {
  const k = new FileKeptIds(DIR, 'node-1', disk);
  const hs = sortedById(k.list());
  k.close();
  return hs;
};

/** A churning workload: puts, removals, re-puts with a new instance, a batch now and then. */
function workload(n: number, seed: number): KeptChanges[] {
  const random = seeded(seed);
  const live: number[] = [];
  const out: KeptChanges[] = [];
  for (let i = 0; i < n; i++) {
    const c: KeptChanges = { put: [handle(i)], remove: [] };
    live.push(i);
    if (live.length > 8) c.remove.push(handle(live.splice(Math.floor(random() * live.length), 1)[0]!).requestId);
    if (random() < 0.2) c.put.push(handle(live[Math.floor(random() * live.length)]!, `instance-${i}`));
    out.push(c);
  }
  return out;
}

class Crash extends Error {}

/** The simulated disk, losing power just before its `at`-th mutating call (counted from 0). */
function crashing(sim: SimDisk, at: number, calls: string[] = []): KeptDisk {
  const step = (what: string) => {
    if (calls.length === at) {
      sim.powerLoss();
      throw new Crash(`power lost before ${what}`);
    }
    calls.push(what);
  };
  return {
    mkdirp: (d) => (step('mkdirp'), sim.mkdirp(d)),
    exists: (p) => sim.exists(p),
    read: (p) => sim.read(p),
    writeFile: (p, t) => (step(`writeFile ${p}`), sim.writeFile(p, t)),
    openAppend: (p) => (step(`openAppend ${p}`), sim.openAppend(p)),
    append: (fd, t) => (step('append'), sim.append(fd, t)),
    fsync: (fd) => (step('fsync'), sim.fsync(fd)),
    fsyncPath: (p) => (step(`fsyncPath ${p}`), sim.fsyncPath(p)),
    fsyncDir: (d) => (step(`fsyncDir ${d}`), sim.fsyncDir(d)),
    rename: (f, t) => (step(`rename ${f} ${t}`), sim.rename(f, t)),
    close: (fd) => (step('close'), sim.close(fd)),
    remove: (p) => (step(`remove ${p}`), sim.remove(p)),
  };
}

/**
 * Run the workload on a disk that loses power before call `at`; return what was acknowledged, the
 * change in flight when the power went (if any), and the calls made.
 */
function runUntilCrash(
  sim: SimDisk,
  ops: KeptChanges[],
  at: number,
): { acked: Model; inflight?: KeptChanges; calls: string[] } {
  const calls: string[] = [];
  const acked = new Model();
  let inflight: KeptChanges | undefined;
  try {
    const k = new FileKeptIds(DIR, 'node-1', crashing(sim, at, calls));
    for (const op of ops) {
      inflight = op;
      k.apply(op);
      acked.apply(op);
      inflight = undefined;
    }
    k.close();
  } catch (err) {
    if (!(err instanceof Crash)) throw err;
    return { acked, ...(inflight ? { inflight } : {}), calls };
  }
  return { acked, calls };
}

/** After power loss the file holds the acknowledged changes, plus (or not) the one in flight. */
function expectAckedAfterPowerLoss(sim: SimDisk, acked: Model, inflight: KeptChanges | undefined, where: string): void {
  sim.powerLoss(); // again, if the run finished: nothing left unsynced may be needed
  const found = reopened(sim);
  const withInflight = acked.clone();
  if (inflight) withInflight.apply(inflight);
  const ok =
    JSON.stringify(found) === JSON.stringify(acked.sorted()) ||
    JSON.stringify(found) === JSON.stringify(withInflight.sorted());
  if (!ok) expect(found, where).toEqual(acked.sorted());
}

describe('SimDisk', () => {
  it('reads see the page cache; power loss keeps only what was fsynced', () => {
    const disk = new SimDisk();
    disk.mkdirp('/d');
    const fd = disk.openAppend('/d/f');
    disk.fsyncDir('/d');
    disk.append(fd, 'one\n');
    disk.fsync(fd);
    disk.append(fd, 'two\n');
    expect(disk.read('/d/f')).toBe('one\ntwo\n');
    disk.powerLoss();
    expect(disk.read('/d/f')).toBe('one\n');
    expect(() => disk.append(fd, 'x')).toThrow(/EBADF/); // the process went down with the power
  });

  it('a file created and fsynced but never dir-fsynced vanishes on power loss', () => {
    const disk = new SimDisk();
    disk.mkdirp('/d');
    disk.writeFile('/d/a', 'a');
    disk.fsyncPath('/d/a');
    disk.writeFile('/d/b', 'b');
    disk.fsyncPath('/d/b');
    disk.fsyncDir('/d');
    disk.writeFile('/d/c', 'c');
    disk.fsyncPath('/d/c');
    expect(disk.files()).toEqual(['/d/a', '/d/b', '/d/c']);
    disk.powerLoss();
    expect(disk.files()).toEqual(['/d/a', '/d/b']);
    expect(disk.exists('/d/c')).toBe(false);
    expect(disk.exists('/d')).toBe(true);
  });

  it('a rename survives power loss only once its directory is fsynced', () => {
    const disk = new SimDisk();
    disk.mkdirp('/d');
    disk.writeFile('/d/log', 'old');
    disk.fsyncPath('/d/log');
    disk.fsyncDir('/d');
    disk.writeFile('/d/log.tmp', 'new');
    disk.fsyncPath('/d/log.tmp');
    disk.rename('/d/log.tmp', '/d/log');
    expect(disk.read('/d/log')).toBe('new');
    disk.powerLoss();
    expect(disk.read('/d/log')).toBe('old');
    expect(disk.files()).toEqual(['/d/log']); // the temporary file was never in the directory durably
    disk.writeFile('/d/log.tmp', 'new');
    disk.fsyncPath('/d/log.tmp');
    disk.rename('/d/log.tmp', '/d/log');
    disk.fsyncDir('/d');
    disk.powerLoss();
    expect(disk.read('/d/log')).toBe('new');
    expect(disk.files()).toEqual(['/d/log']);
  });

  it('tearing keeps a chosen prefix of the unsynced appended tail, the same on every run', () => {
    const asked: number[] = [];
    const disk = new SimDisk({ tear: (n) => (asked.push(n), 5) });
    disk.mkdirp('/d');
    const fd = disk.openAppend('/d/f');
    disk.fsyncDir('/d');
    disk.append(fd, 'synced\n');
    disk.fsync(fd);
    disk.append(fd, 'unsynced\n');
    disk.powerLoss();
    expect(asked).toEqual([9]);
    expect(disk.read('/d/f')).toBe('synced\nunsyn');
  });

  it('fail(code) makes writes, fsyncs and renames throw an Error with that code until cleared', () => {
    const disk = new SimDisk();
    disk.mkdirp('/d');
    disk.writeFile('/d/f', 'kept');
    const fd = disk.openAppend('/d/f');
    disk.fail('EIO');
    for (const call of [
      () => disk.writeFile('/d/f', 'x'),
      () => disk.append(fd, 'x'),
      () => disk.fsync(fd),
      () => disk.fsyncPath('/d/f'),
      () => disk.fsyncDir('/d'),
      () => disk.rename('/d/f', '/d/g'),
    ]) {
      let thrown: unknown;
      try {
        call();
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toBeInstanceOf(Error);
      expect((thrown as NodeJS.ErrnoException).code).toBe('EIO');
    }
    expect(disk.read('/d/f')).toBe('kept'); // reads still work, and nothing changed
    disk.fail(undefined);
    disk.append(fd, '!');
    expect(disk.read('/d/f')).toBe('kept!');
  });
});

describe('FileKeptIds on SimDisk: acknowledged survives power loss', () => {
  it('every change acknowledged before power loss is found after it, through compactions', () => {
    const disk = new SimDisk(); // unsynced bytes are all lost
    const ops = workload(3000, 1);
    const random = seeded(2);
    const acked = new Model();
    let k = new FileKeptIds(DIR, 'node-1', disk);
    let losses = 0;
    for (const op of ops) {
      k.apply(op);
      acked.apply(op);
      if (random() < 0.01) {
        disk.powerLoss();
        losses++;
        expect(reopened(disk)).toEqual(acked.sorted());
        k = new FileKeptIds(DIR, 'node-1', disk);
        expect(sortedById(k.list())).toEqual(acked.sorted());
      }
    }
    disk.powerLoss();
    expect(reopened(disk)).toEqual(acked.sorted());
    expect(losses).toBeGreaterThan(10);
    expect(disk.files()).toEqual([`${DIR}/node-1.handles.jsonl`]);
  });

  it('power lost before any one disk call (opening, appends, compaction) loses nothing acknowledged', () => {
    const ops = workload(700, 3);
    // One run without a crash, to find the calls of each compaction.
    const all = runUntilCrash(new SimDisk(), ops, Infinity).calls;
    const compactions = all.flatMap((c, i) => (c.startsWith('writeFile') ? [i] : []));
    expect(compactions.length).toBeGreaterThan(1); // the one on opening, and at least one under churn
    const points = new Set<number>();
    for (let i = 0; i < 40; i++) points.add(i);
    for (const c of compactions) for (let i = c - 4; i < c + 10; i++) points.add(i);
    points.add(all.length);
    for (const tear of [() => 0, (n: number) => n >> 1, (n: number) => n]) {
      for (const at of points) {
        const sim = new SimDisk({ tear });
        const { acked, inflight, calls } = runUntilCrash(sim, ops, at);
        expectAckedAfterPowerLoss(
          sim,
          acked,
          inflight,
          `power lost before call ${at} (${all[at]}), after ${calls.length} calls`,
        );
      }
    }
  });

  it('a torn unsynced tail is ignored on load, however much of it reached the disk; a batch is all or nothing', () => {
    const first: KeptChanges = { put: [handle(1), handle(2), handle(3)], remove: [] };
    const batch: KeptChanges = {
      put: [handle(4), { ...handle(1), instance: 'instance-9' }],
      remove: [handle(2).requestId],
    };
    const single: KeptChanges = { put: [handle(5)], remove: [] };
    for (const inflight of [batch, single]) {
      let tail = 0;
      const kinds = new Set<string>();
      for (let keep = 0; keep === 0 || keep <= tail; keep++) {
        const sim = new SimDisk({ tear: (n) => ((tail = n), keep) });
        new FileKeptIds(DIR, 'node-1', sim).apply(first);
        // Power goes between the append and its fsync: the change was never acknowledged.
        const disk: KeptDisk = {
          ...bind(sim),
          fsync: () => {
            sim.powerLoss();
            throw new Crash('power lost before fsync');
          },
        };
        const k = new FileKeptIds(DIR, 'node-1', disk);
        expect(() => k.apply(inflight)).toThrow(Crash);
        const found = reopened(sim);
        const without = new Model();
        without.apply(first);
        const withIt = without.clone();
        withIt.apply(inflight);
        // Not acknowledged: it may be there or not, but whole; a line cut short is ignored.
        if (JSON.stringify(found) === JSON.stringify(without.sorted())) kinds.add('without');
        else expect(found, `${keep} of ${tail} unsynced bytes kept`).toEqual(withIt.sorted());
        if (JSON.stringify(found) === JSON.stringify(withIt.sorted())) kinds.add('with');
        // Opening rewrote the log without the torn line: it ends with a whole line and opens again.
        expect(sim.read(`${DIR}/node-1.handles.jsonl`).endsWith('\n')).toBe(true);
        sim.powerLoss();
        expect(reopened(sim)).toEqual(found);
      }
      expect(tail).toBeGreaterThan(100);
      expect(kinds).toEqual(new Set(['without', 'with']));
    }
  });
});

describe('FileKeptIds on SimDisk: disk errors', () => {
  const code = (f: () => void): string | undefined => {
    try {
      f();
    } catch (err) {
      expect(err).toBeInstanceOf(Error);
      return (err as NodeJS.ErrnoException).code;
    }
    return undefined;
  };

  it('a full disk fails the batch with ENOSPC and leaves the view as it was; cleared, it works again', () => {
    const disk = new SimDisk();
    const k = new FileKeptIds(DIR, 'node-1', disk);
    const acked = new Model();
    const first: KeptChanges = { put: [handle(1), handle(2), handle(3)], remove: [] };
    k.apply(first);
    acked.apply(first);
    const before = sortedById(k.list());
    disk.fail('ENOSPC');
    // A new put over an existing one, a new requestId for a name already kept, a removal: none may show.
    const failing: KeptChanges = {
      put: [
        { ...handle(1), instance: 'instance-2' },
        { ...handle(2), requestId: 'r-other-0000000000000000000' },
        handle(4),
      ],
      remove: [handle(3).requestId],
    };
    expect(code(() => k.apply(failing))).toBe('ENOSPC');
    expect(code(() => k.put(handle(5)))).toBe('ENOSPC');
    expect(code(() => k.remove(handle(1).requestId))).toBe('ENOSPC');
    expect(sortedById(k.list())).toEqual(before);
    expect(k.find('app-1', 'disk-1')?.instance).toBe('instance-1');
    expect(k.find('app-2', 'disk-2')?.requestId).toBe(handle(2).requestId);
    expect(k.find('app-1', 'disk-4')).toBeUndefined();
    expect(k.find('app-0', 'disk-3')?.requestId).toBe(handle(3).requestId);
    disk.fail(undefined);
    const next: KeptChanges = { put: [handle(6)], remove: [handle(2).requestId] };
    k.apply(next);
    acked.apply(next);
    expect(sortedById(k.list())).toEqual(acked.sorted());
    expect(reopened(disk)).toEqual(acked.sorted());
    disk.powerLoss();
    expect(reopened(disk)).toEqual(acked.sorted());
  });

  it('an fsync that fails after the append reached the page cache: the failed change never comes back', () => {
    const sim = new SimDisk();
    let failNext = false;
    const disk: KeptDisk = {
      ...bind(sim),
      fsync: (fd) => {
        if (failNext) {
          failNext = false;
          throw Object.assign(new Error('EIO: simulated disk error'), { code: 'EIO' });
        }
        sim.fsync(fd);
      },
    };
    const k = new FileKeptIds(DIR, 'node-1', disk);
    const acked = new Model();
    k.put(handle(1));
    acked.apply({ put: [handle(1)], remove: [] });
    failNext = true;
    expect(code(() => k.put(handle(2)))).toBe('EIO');
    expect(k.find('app-2', 'disk-2')).toBeUndefined();
    k.put(handle(3));
    acked.apply({ put: [handle(3)], remove: [] });
    // Without power loss too (the failed line was in the page cache): only what was acknowledged.
    expect(reopened(sim)).toEqual(acked.sorted());
    sim.powerLoss();
    expect(reopened(sim)).toEqual(acked.sorted());
  });

  it('an append cut short by a full disk does not leave a damaged line in the middle of the log', () => {
    const sim = new SimDisk();
    let failNext = false;
    const disk: KeptDisk = {
      ...bind(sim),
      append: (fd, text) => {
        if (!failNext) return sim.append(fd, text);
        failNext = false;
        sim.append(fd, text.slice(0, text.length >> 1));
        throw Object.assign(new Error('ENOSPC: simulated disk error'), { code: 'ENOSPC' });
      },
    };
    const k = new FileKeptIds(DIR, 'node-1', disk);
    const acked = new Model();
    k.put(handle(1));
    acked.apply({ put: [handle(1)], remove: [] });
    failNext = true;
    expect(code(() => k.putMany([handle(2), handle(3)]))).toBe('ENOSPC');
    k.put(handle(4));
    acked.apply({ put: [handle(4)], remove: [] });
    expect(reopened(sim)).toEqual(acked.sorted());
    sim.powerLoss();
    expect(reopened(sim)).toEqual(acked.sorted());
  });

  /** The simulated disk with one call made to fail with EIO while `armed()` says so; counts the failures. */
  function failing(
    sim: SimDisk,
    which: 'writeFile' | 'fsyncDir',
    armed: () => boolean,
  ): { disk: KeptDisk; failures: () => number } {
    let failures = 0;
    const eio = () => {
      failures++;
      return Object.assign(new Error('EIO: simulated disk error'), { code: 'EIO' });
    };
    const disk: KeptDisk = { ...bind(sim) };
    if (which === 'writeFile')
      disk.writeFile = (p, t) => {
        if (armed()) throw eio();
        sim.writeFile(p, t);
      };
    else
      disk.fsyncDir = (d) => {
        if (armed()) throw eio();
        sim.fsyncDir(d);
      };
    return { disk, failures: () => failures };
  }

  /** One put and one removal per change until `done()` (a compaction is due within about 500). */
  function churnUntil(k: FileKeptIds, acked: Model, done: () => boolean): number {
    let i = 0;
    for (; !done(); i++) {
      if (i === 2000) throw new Error('no compaction was tried');
      const c: KeptChanges = { put: [handle(i)], remove: i > 0 ? [handle(i - 1).requestId] : [] };
      k.apply(c);
      acked.apply(c);
    }
    return i;
  }

  it('a compaction that fails before its rename: the change that triggered it is acknowledged, the old log stays in use', () => {
    const sim = new SimDisk();
    let armed = false;
    const { disk, failures } = failing(sim, 'writeFile', () => armed);
    const k = new FileKeptIds(DIR, 'node-1', disk);
    const acked = new Model();
    armed = true;
    // Returns: each change was appended and fsynced before the compaction was tried.
    let i = churnUntil(k, acked, () => failures() > 0);
    armed = false;
    for (const end = i + 5; i < end; i++) {
      const c: KeptChanges = { put: [handle(i)], remove: [handle(i - 1).requestId] };
      k.apply(c);
      acked.apply(c);
    }
    sim.powerLoss();
    expect(reopened(sim)).toEqual(acked.sorted());
  });

  /** A log whose compaction failed after its rename (the directory fsync), with what was acknowledged. */
  function compactionFailedAfterRename() {
    const sim = new SimDisk();
    let armed = false;
    const { disk, failures } = failing(sim, 'fsyncDir', () => armed);
    const k = new FileKeptIds(DIR, 'node-1', disk);
    const acked = new Model();
    armed = true;
    churnUntil(k, acked, () => failures() > 0);
    return { sim, k, acked, disarm: () => (armed = false) };
  }

  it('a compaction that fails after its rename: power lost then keeps every acknowledged change', () => {
    const { sim, acked } = compactionFailedAfterRename();
    sim.powerLoss();
    expect(reopened(sim)).toEqual(acked.sorted());
  });

  it('a compaction that fails after its rename: the next change rewrites the log, and reports the error while the disk fails', () => {
    const { sim, k, acked, disarm } = compactionFailedAfterRename();
    // The new log's name may not survive power loss: the next change is not appended to it but
    // rewrites the log, and reports the error while the disk fails.
    expect(code(() => k.put(handle(100_000)))).toBe('EIO');
    expect(sortedById(k.list())).toEqual(acked.sorted());
    disarm();
    k.put(handle(100_001));
    acked.apply({ put: [handle(100_001)], remove: [] });
    sim.powerLoss();
    expect(reopened(sim)).toEqual(acked.sorted());
  });

  it('opening while the disk fails writes: the agent starts from what it read, and the next change reports the error until the disk works', () => {
    const sim = new SimDisk();
    const first = new FileKeptIds(DIR, 'node-1', sim);
    first.put(handle(1));
    first.close();
    sim.fail('EIO');
    // Opening compacts the log; that fails, and the log read stays where it is, durable.
    const k = new FileKeptIds(DIR, 'node-1', sim);
    expect(sortedById(k.list())).toEqual([handle(1)]);
    expect(code(() => k.put(handle(2)))).toBe('EIO');
    expect(sortedById(k.list())).toEqual([handle(1)]); // a change that failed is not kept
    sim.fail(undefined);
    k.put(handle(3));
    sim.powerLoss();
    expect(reopened(sim)).toEqual(sortedById([handle(1), handle(3)]));
  });

  it('the earlier one-array file is moved to the log durably: power lost anywhere while moving keeps its entries', () => {
    const hs = [handle(7), handle(8)];
    const seed = (sim: SimDisk) => {
      sim.mkdirp(DIR);
      sim.writeFile(`${DIR}/node-1.handles.json`, JSON.stringify(hs));
      sim.fsyncPath(`${DIR}/node-1.handles.json`);
      sim.fsyncDir(DIR);
    };
    for (let at = 0; at < 12; at++) {
      const sim = new SimDisk();
      seed(sim);
      try {
        new FileKeptIds(DIR, 'node-1', crashing(sim, at)).close();
      } catch (err) {
        if (!(err instanceof Crash)) throw err;
      }
      expect(reopened(sim), `power lost before call ${at}`).toEqual(sortedById(hs));
    }
    const sim = new SimDisk();
    seed(sim);
    new FileKeptIds(DIR, 'node-1', sim).close();
    expect(sim.files()).toEqual([`${DIR}/node-1.handles.jsonl`]);
  });
});

/** The SimDisk's methods as plain functions, to override one in a test. */
function bind(sim: SimDisk): KeptDisk {
  return {
    mkdirp: (d) => sim.mkdirp(d),
    exists: (p) => sim.exists(p),
    read: (p) => sim.read(p),
    writeFile: (p, t) => sim.writeFile(p, t),
    openAppend: (p) => sim.openAppend(p),
    append: (fd, t) => sim.append(fd, t),
    fsync: (fd) => sim.fsync(fd),
    fsyncPath: (p) => sim.fsyncPath(p),
    fsyncDir: (d) => sim.fsyncDir(d),
    rename: (f, t) => sim.rename(f, t),
    close: (fd) => sim.close(fd),
    remove: (p) => sim.remove(p),
  };
}
