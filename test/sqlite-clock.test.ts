/**
 * The SQLite store judges lock expiries on the host's monotonic clock: a step of the wall clock
 * (an operator, NTP) must not hand an active writer's target to another writer, and a database
 * reopened on another clock (after a host reboot, or written before) never shortens a lock.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { HostClock } from '../store/host-clock.js';
import { SqliteStore } from '../store/sqlite.js';
import { tempDir } from './helpers.js';

const T = 'vm1.disk';
const X = 'X'.repeat(21);
const Y = 'Y'.repeat(21);
const open = (s: SqliteStore, requestId: string, session: string, leaseMs: number) =>
  s.open({ target: T, requestId, principal: 'p', mode: 'write', session, leaseMs });

/** A clock the test sets. */
function manual(name: string, start: number): HostClock & { at: number } {
  const c = { name, at: start, now: () => c.at };
  return c;
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  vi.restoreAllMocks();
  for (const c of cleanups.splice(0)) c();
});
function dbPath(): string {
  const t = tempDir();
  cleanups.push(t.cleanup);
  return join(t.dir, 'store.sqlite');
}

describe('SQLite lock expiries and the host clock', () => {
  it('a step of the wall clock an hour ahead does not expire a live lock', async () => {
    const s = new SqliteStore(dbPath());
    try {
      expect(await open(s, X, 's1', 10_000)).toMatchObject({ ok: true });
      const wall = Date.now();
      vi.spyOn(Date, 'now').mockReturnValue(wall + 3_600_000);
      expect(await open(s, Y, 's2', 10_000)).toMatchObject({ ok: false, code: 'LOCKED' });
    } finally {
      await s.shutdown();
    }
  });

  it('reopened after a reboot of the host, every lock lasts the longest lease granted, from then', async () => {
    const path = dbPath();
    const before = manual('boot:aaaa-1111', 1_000_000);
    const a = new SqliteStore(path, { clock: before });
    await open(a, X, 's1', 8000);
    await a.shutdown();
    // The new boot's clock starts near zero.
    const after = manual('boot:bbbb-2222', 50);
    const b = new SqliteStore(path, { clock: after });
    try {
      after.at = 50 + 7999;
      expect(await open(b, Y, 's2', 8000)).toMatchObject({ ok: false, code: 'LOCKED' });
      after.at = 50 + 8000;
      expect(await open(b, Y, 's2', 8000)).toMatchObject({ ok: true, takeover: false });
    } finally {
      await b.shutdown();
    }
  });

  it('a database whose expiries are wall-clock times keeps each lock the time it had left', async () => {
    const path = dbPath();
    const wallClock: HostClock = { name: 'wall', now: () => Date.now() };
    const a = new SqliteStore(path, { clock: wallClock });
    await open(a, X, 's1', 60_000);
    await a.shutdown();
    const mono = manual('boot:cccc-3333', 500);
    const b = new SqliteStore(path, { clock: mono });
    try {
      mono.at = 500 + 55_000;
      expect(await open(b, Y, 's2', 1000)).toMatchObject({ ok: false, code: 'LOCKED' });
      mono.at = 500 + 60_001;
      expect(await open(b, Y, 's2', 1000)).toMatchObject({ ok: true });
    } finally {
      await b.shutdown();
    }
  });

  it('another process of the same boot adopts nothing: its locks stay as they are', async () => {
    const path = dbPath();
    const c = manual('boot:dddd-4444', 10_000);
    const a = new SqliteStore(path, { clock: c });
    const b = new SqliteStore(path, { clock: c });
    try {
      await open(a, X, 's1', 3000);
      c.at = 12_999;
      expect(await open(b, Y, 's2', 3000)).toMatchObject({ ok: false, code: 'LOCKED' });
      c.at = 13_000;
      expect(await open(b, Y, 's2', 3000)).toMatchObject({ ok: true });
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });
});
