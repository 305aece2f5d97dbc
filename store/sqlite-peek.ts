/** Read-only looks at a SQLite store's file from outside the replicas, for inspection (status, explain). */
import Database from 'better-sqlite3';
import { hostClock } from './host-clock.js';
import { accessOf } from './rules.js';
import { type LockRecord, type TargetAccess, type Tombstone } from './types.js';

import {
  accessOfRow,
  recordOf,
  SELECT_RECORD,
  SELECT_TOMBSTONES,
  type AccessRow,
  type RecordRow,
} from './sqlite-rows.js';

/**
 * For inspection (the launcher's `status` and `explain`): each target's record and tombstones, read
 * through a read-only connection that sets nothing up and waits at most `waitMs` for the file, so a
 * replica holding the write lock (a store that is dismounted, busy or being rebooted) cannot stall
 * the reader: in WAL mode readers do not wait for writers. `now` is the store's clock (this host's).
 */
export function peekSqlite(
  path: string,
  targets: string[],
  waitMs = 500,
): {
  records: Map<string, LockRecord | undefined>;
  tombstones: Map<string, Tombstone[]>;
  access: Map<string, TargetAccess | undefined>;
  now: number;
} {
  const db = new Database(path, { readonly: true, fileMustExist: true, timeout: waitMs });
  try {
    const rec = db.prepare<[string], RecordRow>(SELECT_RECORD);
    const tombs = db.prepare<[string], { list: string }>(SELECT_TOMBSTONES);
    // A file no replica of this version has opened yet has no owners column: every target's access is derived.
    const owners = db
      .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('target_versions')")
      .all()
      .some((c) => c.name === 'owner');
    const meta = db.prepare<[string], AccessRow & { version: number; fixed: number }>(
      owners
        ? 'SELECT owner, grants, version, fixed FROM target_versions WHERE target = ?'
        : "SELECT NULL AS owner, '[]' AS grants, version, fixed FROM target_versions WHERE target = ?",
    );
    const records = new Map<string, LockRecord | undefined>();
    const tombstones = new Map<string, Tombstone[]>();
    const access = new Map<string, TargetAccess | undefined>();
    for (const t of targets) {
      const r = rec.get(t);
      const record = r && recordOf(r);
      records.set(t, record);
      const l = tombs.get(t);
      const list = l ? (JSON.parse(l.list) as Tombstone[]) : [];
      tombstones.set(t, list);
      const m = meta.get(t);
      access.set(
        t,
        accessOf({
          record,
          version: m?.version ?? 0,
          fixedSize: m?.fixed ?? 0,
          tombstones: () => list,
          access: accessOfRow(m),
        }),
      );
    }
    return { records, tombstones, access, now: hostClock().now() };
  } finally {
    db.close();
  }
}

/**
 * For inspection (the launcher's `explain`): the target a requestId holds, or held (a tombstone names
 * it), or undefined if the store never saw it; read as peekSqlite reads.
 */
export function findRequestSqlite(path: string, requestId: string, waitMs = 500): string | undefined {
  const db = new Database(path, { readonly: true, fileMustExist: true, timeout: waitMs });
  try {
    const held = db
      .prepare<[string], { target: string }>('SELECT target FROM records WHERE request_id = ? LIMIT 1')
      .get(requestId);
    if (held) return held.target;
    for (const row of db
      .prepare<[string], { target: string; list: string }>(
        'SELECT target, list FROM tombstones WHERE instr(list, ?) > 0',
      )
      .iterate(JSON.stringify(requestId))) {
      if ((JSON.parse(row.list) as Tombstone[]).some((t) => t.requestId === requestId)) return row.target;
    }
    return undefined;
  } finally {
    db.close();
  }
}
