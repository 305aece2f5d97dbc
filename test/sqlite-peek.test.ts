/**
 * The launcher reads a SQLite store for `status` and `explain` while replicas use it. A replica that
 * holds the write lock (a long transaction, a store being rebooted) must not stall that read: opening
 * the store as a replica does waited up to the 10 s busy timeout and then failed SQLITE_BUSY, with the
 * launcher's event loop blocked all along.
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { peekSqlite, SqliteStore } from '../store/sqlite.js';
import { tempDir } from './helpers.js';

const dirs: Array<{ cleanup: () => void }> = [];
afterEach(() => {
  for (const d of dirs.splice(0)) d.cleanup();
});

describe('peekSqlite', () => {
  it("reads a target's record and tombstones while another connection holds the write lock", async () => {
    const t = tempDir();
    dirs.push(t);
    const path = join(t.dir, 'store.sqlite');
    const store = new SqliteStore(path);
    await store.open({
      target: 'a.disk',
      requestId: 'X'.repeat(21),
      principal: 'p',
      mode: 'write',
      session: 's1',
      leaseMs: 0,
      instance: 'i1',
    });
    await store.editAccess({ target: 'a.disk', by: 'p', principal: 'q', mode: 'write' });
    await store.open({
      target: 'a.disk',
      requestId: 'Y'.repeat(21),
      principal: 'q',
      mode: 'write',
      session: 's2',
      leaseMs: 60_000,
      instance: 'i2',
    });
    const blocker = new Database(path);
    blocker.exec('BEGIN IMMEDIATE');
    try {
      const p = peekSqlite(path, ['a.disk', 'none.disk']);
      expect(p.records.get('a.disk')).toMatchObject({ requestId: 'Y'.repeat(21), principal: 'q', session: 's2' });
      expect(p.records.get('a.disk')!.expiresAt).toBeGreaterThan(p.now);
      expect(p.tombstones.get('a.disk')).toMatchObject([
        { requestId: 'X'.repeat(21), takenBy: { requestId: 'Y'.repeat(21), principal: 'q' } },
      ]);
      expect(p.records.get('none.disk')).toBeUndefined();
      expect(p.tombstones.get('none.disk')).toEqual([]);
      expect(p.access.get('a.disk')).toEqual({ owner: 'p', grants: [{ principal: 'q', mode: 'write' }] });
      expect(p.access.get('none.disk')).toBeUndefined();
    } finally {
      blocker.exec('ROLLBACK');
      blocker.close();
      await store.shutdown();
    }
  });

  it('a file that is not there is an error, not a new database', () => {
    const t = tempDir();
    dirs.push(t);
    expect(() => peekSqlite(join(t.dir, 'missing.sqlite'), ['a'])).toThrow();
  });
});
