/**
 * A store that can be read but not written (a read-only file, a disk remounted read-only) is not an
 * outage that comes and goes: the replica must not mount it again and again (it flapped
 * dismounted/mounted twice a second, the cause only in a log file). It stays dismounted, says why,
 * and mounts again once the store takes writes.
 */
import type Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { LocalCluster } from '../cluster/local.js';
import { tempDir, waitFor } from './helpers.js';

describe('a replica over a store that cannot be written', () => {
  it('stays dismounted with the store error named, and mounts again once the store takes writes', async () => {
    const t = tempDir();
    const cluster = await LocalCluster.start({ dir: t.dir, replicas: 1 });
    try {
      const r = cluster.replicas[0]!;
      const db = (r.store as unknown as { db: Database.Database }).db;
      const app = new Application(await cluster.addNode('node-1'), { name: 'app' });
      const h = await app.open('ro.disk');
      await h.write(0, new TextEncoder().encode('before'));
      let mounts = 0;
      const mount = r.mount.bind(r);
      r.mount = () => {
        mounts++;
        mount();
      };
      // Read-only from now on, as a file or disk turned read-only under a running replica.
      db.pragma('query_only = ON');
      const late = h.write(0, new TextEncoder().encode('after'));
      await waitFor('the replica dismounted', () => r.isDismounted, 5000);
      await new Promise((res) => setTimeout(res, 3000));
      expect({ mounts, dismounted: r.isDismounted }).toEqual({ mounts: 0, dismounted: true });
      expect(r.storeError).toMatch(/SQLITE_READONLY/);
      expect(h.state).toBe('paused');
      db.pragma('query_only = OFF');
      await late;
      expect(r.isDismounted).toBe(false);
      expect(r.storeError).toBeUndefined();
      expect(new TextDecoder().decode(await h.read(0, 6))).toBe('aftere');
      await h.close();
    } finally {
      await cluster.stop();
      t.cleanup();
    }
  }, 30_000);
});
