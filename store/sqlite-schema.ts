/** The SQLite store's schema: its tables, the migrations of files written by older versions, and the clock its lock expiries are on. */
import Database from 'better-sqlite3';
import { type HostClock } from './host-clock.js';
import { PAGE_BYTES } from './types.js';

/** Targets are stored in pages of this many bytes (the store's page). */
const PAGE = PAGE_BYTES;

/**
 * Create the tables and bring a database written by an older version up to date; runs inside
 * the opening write transaction, so no process ever sees half of it.
 */
export function createSchema(db: Database.Database, clock: HostClock): void {
  db.exec(`
    CREATE TABLE IF NOT EXISTS target_versions (target TEXT PRIMARY KEY, size INTEGER NOT NULL, version INTEGER NOT NULL, fixed INTEGER NOT NULL DEFAULT 0, owner TEXT, grants TEXT NOT NULL DEFAULT '[]', changes_from INTEGER NOT NULL DEFAULT 0) STRICT;
    CREATE TABLE IF NOT EXISTS pages (target TEXT NOT NULL, page INTEGER NOT NULL, data BLOB NOT NULL, version INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (target, page)) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS freed_pages (target TEXT NOT NULL, page INTEGER NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (target, page)) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS records (
      target TEXT PRIMARY KEY, request_id TEXT NOT NULL, principal TEXT NOT NULL, session TEXT NOT NULL,
      expires_at INTEGER NOT NULL, last_seq INTEGER NOT NULL,
      instance TEXT NOT NULL DEFAULT '', instance_seq INTEGER NOT NULL DEFAULT 0, prev_instance TEXT NOT NULL DEFAULT '',
      retired TEXT NOT NULL DEFAULT '', epoch INTEGER NOT NULL DEFAULT 0) STRICT;
    CREATE TABLE IF NOT EXISTS tombstones (target TEXT PRIMARY KEY, list TEXT NOT NULL) STRICT;
    CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    INSERT OR IGNORE INTO meta (key, value) VALUES ('max_lease_ms', '0');
  `);
  adoptClock(db, clock);
  // Records written before handle instances: add the columns (a record without an instance is
  // resumed only by a takeover, which is what a kept requestId of that time does).
  // Databases written before targets had fixed sizes: none has one.
  if (
    !db
      .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('target_versions')")
      .all()
      .some((c) => c.name === 'fixed')
  ) {
    db.exec('ALTER TABLE target_versions ADD COLUMN fixed INTEGER NOT NULL DEFAULT 0');
  }
  // Databases written before targets had owners: none is recorded (NULL), each target's is derived
  // by the rules (rules.accessOf) and recorded with the first change made to it.
  if (
    !db
      .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('target_versions')")
      .all()
      .some((c) => c.name === 'owner')
  ) {
    db.exec(
      "ALTER TABLE target_versions ADD COLUMN owner TEXT; ALTER TABLE target_versions ADD COLUMN grants TEXT NOT NULL DEFAULT '[]';",
    );
  }
  const cols = db
    .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('records')")
    .all()
    .map((c) => c.name);
  if (!cols.includes('instance')) {
    db.exec(`ALTER TABLE records ADD COLUMN instance TEXT NOT NULL DEFAULT '';
      ALTER TABLE records ADD COLUMN instance_seq INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE records ADD COLUMN prev_instance TEXT NOT NULL DEFAULT '';`);
  }
  // Records written before hand-over counters: none has one (0; the next request carrying one moves it).
  if (
    !db
      .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('records')")
      .all()
      .some((c) => c.name === 'epoch')
  ) {
    db.exec('ALTER TABLE records ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0');
  }
  // Records written before they remembered the instances they were taken over from: none listed.
  if (
    !db
      .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('records')")
      .all()
      .some((c) => c.name === 'retired')
  ) {
    db.exec("ALTER TABLE records ADD COLUMN retired TEXT NOT NULL DEFAULT ''");
  }
  // Databases written before pages kept the version that last wrote them: the changes before each
  // target's version now are not known (`changes_from`; a resume from an older version is told the
  // whole target may have changed), and every page takes that version.
  if (
    !db
      .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('pages')")
      .all()
      .some((c) => c.name === 'version')
  ) {
    db.exec(`ALTER TABLE pages ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
      UPDATE pages SET version = coalesce((SELECT version FROM target_versions v WHERE v.target = pages.target), 0);`);
  }
  if (
    !db
      .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('target_versions')")
      .all()
      .some((c) => c.name === 'changes_from')
  ) {
    db.exec(`ALTER TABLE target_versions ADD COLUMN changes_from INTEGER NOT NULL DEFAULT 0;
      UPDATE target_versions SET changes_from = version;`);
  }
  // The pages changed since a version, read without reading every page of the target.
  db.exec(`CREATE INDEX IF NOT EXISTS pages_by_version ON pages (target, version);
    CREATE INDEX IF NOT EXISTS freed_by_version ON freed_pages (target, version);`);
  // Databases written before targets were paged keep each target as one blob in `targets`: move them to pages.
  if (!db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'targets'").get()) return;
  const put = db.prepare('INSERT OR REPLACE INTO pages (target, page, data, version) VALUES (?, ?, ?, ?)');
  const meta = db.prepare('INSERT OR REPLACE INTO target_versions (target, size, version) VALUES (?, ?, ?)');
  const get = db.prepare<[string], { data: Buffer; version: number }>(
    'SELECT data, version FROM targets WHERE target = ?',
  );
  for (const { target } of db.prepare<[], { target: string }>('SELECT target FROM targets').all()) {
    const r = { target, ...get.get(target)! };
    for (let p = 0; p * PAGE < r.data.length; p++)
      put.run(r.target, p, r.data.subarray(p * PAGE, (p + 1) * PAGE), r.version);
    meta.run(r.target, r.data.length, r.version);
  }
  db.exec('DROP TABLE targets');
}

/**
 * Lock expiries are times on the clock named in `meta`. When this process's clock is another one,
 * bring every expiry over before anything is served, never shortening a lock: from the wall clock
 * (a database written before the monotonic clock) a lock keeps the time it had left; from a
 * previous boot (whose clock is gone) every lock lasts the longest lease the database ever granted,
 * from now.
 */
function adoptClock(db: Database.Database, clock: HostClock): void {
  const row = db.prepare<[], { value: string }>("SELECT value FROM meta WHERE key = 'clock'").get();
  const was = row?.value ?? 'wall';
  if (was === clock.name) return;
  const now = clock.now();
  if (was === 'wall') db.prepare('UPDATE records SET expires_at = ? + MAX(0, expires_at - ?)').run(now, Date.now());
  else {
    const maxLease = Number(
      db.prepare<[], { value: string }>("SELECT value FROM meta WHERE key = 'max_lease_ms'").get()?.value ?? 0,
    );
    db.prepare('UPDATE records SET expires_at = ?').run(now + maxLease);
  }
  db.prepare(
    "INSERT INTO meta (key, value) VALUES ('clock', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
  ).run(clock.name);
}
