/**
 * The embedded durable store: SQLite through better-sqlite3 in WAL mode. Every rule runs in a
 * BEGIN IMMEDIATE transaction, so several replica processes on one host can share the file safely.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { StoreBusyError, TxStore } from './base.js';
import { hostClock, type HostClock } from './host-clock.js';
import { accessOf, type Tx } from './rules.js';
import {
  MAX_DISK_BYTES,
  PAGE_BYTES,
  StoreUnavailableError,
  isZeroPage,
  type Grant,
  type LockRecord,
  type TargetAccess,
  type Tombstone,
} from './types.js';

export interface SqliteStoreOptions {
  /** `FULL` (default) fsyncs every commit; `NORMAL` may lose the last commits on power loss, never on a process crash. */
  synchronous?: 'FULL' | 'NORMAL';
  /**
   * How long an operation keeps retrying while another process holds the write lock before the
   * store counts as unavailable (default 1000). The retries are asynchronous: the replica keeps
   * serving heartbeats meanwhile. Opening the file waits up to OPEN_WAIT_MS instead.
   */
  busyTimeoutMs?: number;
  /**
   * Group commit (default on): operations arriving in the same event-loop turn share one transaction
   * and one fsync, and each is answered only after that transaction commits.
   */
  groupCommit?: boolean;
  /** The clock lock expiries are judged by (default: the host's monotonic clock, see store/host-clock.ts). */
  clock?: HostClock;
}

/** Targets are stored in pages of this many bytes, so a write rewrites only the pages it touches. */
const PAGE = PAGE_BYTES;

const UNAVAILABLE_CODES = /^SQLITE_(BUSY|LOCKED|IOERR|CANTOPEN|FULL|READONLY|NOTADB|CORRUPT|PROTOCOL)/;

/**
 * SQLite's own busy wait, per attempt. It blocks the event loop, so it stays a few milliseconds;
 * longer waits are asynchronous retries in TxStore.
 */
const BUSY_ATTEMPT_MS = 5;
/** Opening the file (WAL switch, schema, migrations) may wait this long for other processes: nothing is served yet. */
const OPEN_WAIT_MS = 10_000;

interface RecordRow {
  target: string;
  request_id: string;
  principal: string;
  session: string;
  expires_at: number;
  last_seq: number;
  instance: string;
  instance_seq: number;
  prev_instance: string;
  retired: string;
  epoch: number;
}

const SELECT_RECORD = 'SELECT * FROM records WHERE target = ?';
const SELECT_TOMBSTONES = 'SELECT list FROM tombstones WHERE target = ?';
/** A target's owner (NULL: none recorded, a target of an earlier version) and access list (JSON), kept with its version. */
const SELECT_ACCESS = 'SELECT owner, grants FROM target_versions WHERE target = ?';

interface AccessRow {
  owner: string | null;
  grants: string;
}

const accessOfRow = (r: AccessRow | undefined): TargetAccess | undefined =>
  r && r.owner !== null ? { owner: r.owner, grants: JSON.parse(r.grants) as Grant[] } : undefined;

function recordOf(r: RecordRow): LockRecord {
  return {
    target: r.target,
    requestId: r.request_id,
    principal: r.principal,
    session: r.session,
    expiresAt: r.expires_at,
    lastSeq: r.last_seq,
    instance: r.instance,
    instanceSeq: r.instance_seq,
    prevInstance: r.prev_instance,
    ...(r.retired ? { retired: r.retired.split(',') } : {}),
    epoch: r.epoch,
  };
}

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

export class SqliteStore extends TxStore {
  readonly kind = 'sqlite';
  private readonly db: Database.Database;
  private readonly txImpl: Tx;
  private readonly getPages: Database.Statement<[string, number, number], { page: number; data: Buffer }>;
  private readonly touch: Database.Statement<[]>;
  private readonly run: Database.Transaction<(fn: (tx: Tx) => unknown, tx: Tx) => unknown>;
  private readonly clock: HostClock;
  /** The longest lock this process has granted (the database keeps the longest any process has). */
  private maxLeaseMs = 0;

  constructor(
    readonly path: string,
    opts: SqliteStoreOptions = {},
  ) {
    super();
    this.clock = opts.clock ?? hostClock();
    this.clockNow = () => this.clock.now();
    this.groupCommit = opts.groupCommit ?? true;
    this.busyWaitMs = opts.busyTimeoutMs ?? 1000;
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    // The busy timeout is set when the connection opens, before any statement: processes that start
    // together wait for each other while one of them switches the file to WAL and creates the schema.
    this.db = new Database(path, { timeout: OPEN_WAIT_MS });
    try {
      const deadline = Date.now() + OPEN_WAIT_MS;
      // Switching to WAL needs the file to itself and can fail busy without waiting: retry it.
      whileBusy(deadline, () => {
        const mode = this.db.pragma('journal_mode = WAL', { simple: true });
        if (path !== ':memory:' && String(mode).toLowerCase() !== 'wal')
          throw Object.assign(new Error(`journal mode is ${String(mode)}, not wal`), { code: 'SQLITE_BUSY' });
      });
      this.db.pragma(`synchronous = ${opts.synchronous ?? 'FULL'}`);
      // Schema and migrations in one write transaction: a process that comes second sees them complete.
      whileBusy(deadline, () => this.db.transaction(() => this.createSchema()).immediate());
    } catch (err) {
      this.db.close();
      throw err;
    }
    const getRecord = this.db.prepare<[string], RecordRow>(SELECT_RECORD);
    const putRecord = this.db.prepare(
      'INSERT INTO records (target, request_id, principal, session, expires_at, last_seq, instance, instance_seq, prev_instance, retired, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ' +
        'ON CONFLICT(target) DO UPDATE SET request_id = excluded.request_id, principal = excluded.principal, ' +
        'session = excluded.session, expires_at = excluded.expires_at, last_seq = excluded.last_seq, ' +
        'instance = excluded.instance, instance_seq = excluded.instance_seq, prev_instance = excluded.prev_instance, retired = excluded.retired, epoch = excluded.epoch',
    );
    const getTombs = this.db.prepare<[string], { list: string }>(SELECT_TOMBSTONES);
    const putTombs = this.db.prepare(
      'INSERT INTO tombstones (target, list) VALUES (?, ?) ON CONFLICT(target) DO UPDATE SET list = excluded.list',
    );
    const deleteRecord = this.db.prepare('DELETE FROM records WHERE target = ?');
    const getMeta = this.db.prepare<[string], { size: number; version: number; fixed: number }>(
      'SELECT size, version, fixed FROM target_versions WHERE target = ?',
    );
    const getAccess = this.db.prepare<[string], AccessRow>(SELECT_ACCESS);
    // A target nobody wrote yet gets its row here, at size and version 0.
    const putAccess = this.db.prepare(
      'INSERT INTO target_versions (target, size, version, owner, grants) VALUES (?, 0, 0, ?, ?) ON CONFLICT(target) DO UPDATE SET owner = excluded.owner, grants = excluded.grants',
    );
    const fixSize = this.db.prepare(
      'INSERT INTO target_versions (target, size, version, fixed) VALUES (?, ?, 0, ?) ON CONFLICT(target) DO UPDATE SET size = max(size, excluded.size), fixed = excluded.fixed',
    );
    const putMeta = this.db.prepare(
      'INSERT INTO target_versions (target, size, version) VALUES (?, ?, ?) ON CONFLICT(target) DO UPDATE SET size = excluded.size, version = excluded.version',
    );
    const getPages = this.db.prepare<[string, number, number], { page: number; data: Buffer }>(
      'SELECT page, data FROM pages WHERE target = ? AND page BETWEEN ? AND ?',
    );
    const getPage = this.db.prepare<[string, number], { data: Buffer }>(
      'SELECT data FROM pages WHERE target = ? AND page = ?',
    );
    const putPage = this.db.prepare(
      'INSERT INTO pages (target, page, data) VALUES (?, ?, ?) ON CONFLICT(target, page) DO UPDATE SET data = excluded.data',
    );
    const deletePage = this.db.prepare('DELETE FROM pages WHERE target = ? AND page = ?');
    const countPages = this.db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM pages WHERE target = ?');
    this.getPages = getPages;
    this.run = this.db.transaction((fn: (tx: Tx) => unknown, tx: Tx) => fn(tx));
    this.touch = this.db.prepare("UPDATE meta SET value = value WHERE key = 'max_lease_ms'");
    const raiseMaxLease = this.db.prepare(
      "UPDATE meta SET value = ? WHERE key = 'max_lease_ms' AND CAST(value AS INTEGER) < ?",
    );
    this.maxLeaseMs = Number(
      this.db.prepare<[], { value: string }>("SELECT value FROM meta WHERE key = 'max_lease_ms'").get()?.value ?? 0,
    );
    this.txImpl = {
      getRecord: (t) => {
        const r = getRecord.get(t);
        return r && recordOf(r);
      },
      putRecord: (r: LockRecord) => {
        putRecord.run(
          r.target,
          r.requestId,
          r.principal,
          r.session,
          r.expiresAt,
          r.lastSeq,
          r.instance,
          r.instanceSeq,
          r.prevInstance,
          (r.retired ?? []).join(','),
          r.epoch ?? 0,
        );
        // Remembered for a reboot of the host, whose monotonic clock starts again (see createSchema).
        const lease = r.expiresAt - this.clock.now();
        if (lease > this.maxLeaseMs) {
          this.maxLeaseMs = lease;
          raiseMaxLease.run(String(lease), lease);
        }
      },
      deleteRecord: (t) => void deleteRecord.run(t),
      getTombstones: (t) => {
        const row = getTombs.get(t);
        return row ? (JSON.parse(row.list) as Tombstone[]) : [];
      },
      putTombstones: (t, list) => void putTombs.run(t, JSON.stringify(list)),
      version: (t) => getMeta.get(t)?.version ?? 0,
      size: (t) => getMeta.get(t)?.size ?? 0,
      fixedSize: (t) => getMeta.get(t)?.fixed ?? 0,
      fixSize: (t, size) => void fixSize.run(t, size, size),
      getAccess: (t) => accessOfRow(getAccess.get(t)),
      putAccess: (t, a) => void putAccess.run(t, a.owner, JSON.stringify(a.grants)),
      maxSize: MAX_DISK_BYTES,
      readData: (t, offset, length) => {
        const size = getMeta.get(t)?.size ?? 0;
        const end = Math.min(size, offset + length);
        if (end <= offset) return new Uint8Array(0);
        return this.assemble(t, offset, end);
      },
      writeData: (t, offset, data) => {
        const meta = getMeta.get(t);
        const version = (meta?.version ?? 0) + 1;
        const end = offset + data.length;
        // Only the pages the write touches are read and rewritten; a whole page is written as is.
        for (let page = Math.floor(offset / PAGE); page * PAGE < end; page++) {
          const start = page * PAGE;
          const from = Math.max(offset, start);
          const to = Math.min(end, start + PAGE);
          let bytes: Uint8Array;
          if (from === start && to === start + PAGE) bytes = data.subarray(from - offset, to - offset);
          else {
            const old = getPage.get(t, page)?.data;
            bytes = new Uint8Array(Math.max(to - start, old?.length ?? 0));
            if (old) bytes.set(old);
            bytes.set(data.subarray(from - offset, to - offset), from - start);
          }
          // A page left all zeros is not kept: it reads as zeros, as one never written does.
          if (isZeroPage(bytes)) deletePage.run(t, page);
          else putPage.run(t, page, bytes);
        }
        putMeta.run(t, Math.max(meta?.size ?? 0, end), version);
        return version;
      },
      pages: (t) => countPages.get(t)?.n ?? 0,
    };
    // From now on an operation must not hold the event loop while another process has the lock.
    this.db.pragma(`busy_timeout = ${BUSY_ATTEMPT_MS}`);
  }

  protected tx<T>(fn: (tx: Tx) => T): T {
    try {
      return this.run.immediate(fn, this.txImpl) as T;
    } catch (err) {
      throw toStoreError(err);
    }
  }

  /** Append one line to the store's history table (call inside `commit`, so it commits with the rule). */
  appendHistory(json: string): void {
    this.db.prepare('INSERT INTO history (line) VALUES (?)').run(json);
  }

  /** Bytes [from, to) of a target, from its pages; pages never written read as zeros. */
  private assemble(target: string, from: number, to: number): Uint8Array {
    const out = new Uint8Array(to - from);
    for (const row of this.getPages.iterate(target, Math.floor(from / PAGE), Math.floor((to - 1) / PAGE))) {
      const start = row.page * PAGE;
      const a = Math.max(from, start);
      const b = Math.min(to, start + row.data.length);
      if (b > a) out.set(row.data.subarray(a - start, b - start), a - from);
    }
    return out;
  }

  /**
   * Create the tables and bring a database written by an older version up to date; runs inside
   * the opening write transaction, so no process ever sees half of it.
   */
  private createSchema(): void {
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS target_versions (target TEXT PRIMARY KEY, size INTEGER NOT NULL, version INTEGER NOT NULL, fixed INTEGER NOT NULL DEFAULT 0, owner TEXT, grants TEXT NOT NULL DEFAULT '[]') STRICT;
      CREATE TABLE IF NOT EXISTS pages (target TEXT NOT NULL, page INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (target, page)) STRICT, WITHOUT ROWID;
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
    this.adoptClock();
    // Records written before handle instances: add the columns (a record without an instance is
    // resumed only by a takeover, which is what a kept requestId of that time does).
    // Databases written before targets had fixed sizes: none has one.
    if (
      !this.db
        .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('target_versions')")
        .all()
        .some((c) => c.name === 'fixed')
    ) {
      this.db.exec('ALTER TABLE target_versions ADD COLUMN fixed INTEGER NOT NULL DEFAULT 0');
    }
    // Databases written before targets had owners: none is recorded (NULL), each target's is derived
    // by the rules (rules.accessOf) and recorded with the first change made to it.
    if (
      !this.db
        .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('target_versions')")
        .all()
        .some((c) => c.name === 'owner')
    ) {
      this.db.exec(
        "ALTER TABLE target_versions ADD COLUMN owner TEXT; ALTER TABLE target_versions ADD COLUMN grants TEXT NOT NULL DEFAULT '[]';",
      );
    }
    const cols = this.db
      .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('records')")
      .all()
      .map((c) => c.name);
    if (!cols.includes('instance')) {
      this.db.exec(`ALTER TABLE records ADD COLUMN instance TEXT NOT NULL DEFAULT '';
        ALTER TABLE records ADD COLUMN instance_seq INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE records ADD COLUMN prev_instance TEXT NOT NULL DEFAULT '';`);
    }
    // Records written before hand-over counters: none has one (0; the next request carrying one moves it).
    if (
      !this.db
        .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('records')")
        .all()
        .some((c) => c.name === 'epoch')
    ) {
      this.db.exec('ALTER TABLE records ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0');
    }
    // Records written before they remembered the instances they were taken over from: none listed.
    if (
      !this.db
        .prepare<[], { name: string }>("SELECT name FROM pragma_table_info('records')")
        .all()
        .some((c) => c.name === 'retired')
    ) {
      this.db.exec("ALTER TABLE records ADD COLUMN retired TEXT NOT NULL DEFAULT ''");
    }
    // Databases written before targets were paged keep each target as one blob in `targets`: move them to pages.
    if (!this.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'targets'").get()) return;
    const put = this.db.prepare('INSERT OR REPLACE INTO pages (target, page, data) VALUES (?, ?, ?)');
    const meta = this.db.prepare('INSERT OR REPLACE INTO target_versions (target, size, version) VALUES (?, ?, ?)');
    const get = this.db.prepare<[string], { data: Buffer; version: number }>(
      'SELECT data, version FROM targets WHERE target = ?',
    );
    for (const { target } of this.db.prepare<[], { target: string }>('SELECT target FROM targets').all()) {
      const r = { target, ...get.get(target)! };
      for (let p = 0; p * PAGE < r.data.length; p++) put.run(r.target, p, r.data.subarray(p * PAGE, (p + 1) * PAGE));
      meta.run(r.target, r.data.length, r.version);
    }
    this.db.exec('DROP TABLE targets');
  }

  /**
   * Lock expiries are times on the clock named in `meta`. When this process's clock is another one,
   * bring every expiry over before anything is served, never shortening a lock: from the wall clock
   * (a database written before the monotonic clock) a lock keeps the time it had left; from a
   * previous boot (whose clock is gone) every lock lasts the longest lease the database ever granted,
   * from now.
   */
  private adoptClock(): void {
    const row = this.db.prepare<[], { value: string }>("SELECT value FROM meta WHERE key = 'clock'").get();
    const was = row?.value ?? 'wall';
    if (was === this.clock.name) return;
    const now = this.clock.now();
    if (was === 'wall')
      this.db.prepare('UPDATE records SET expires_at = ? + MAX(0, expires_at - ?)').run(now, Date.now());
    else {
      const maxLease = Number(
        this.db.prepare<[], { value: string }>("SELECT value FROM meta WHERE key = 'max_lease_ms'").get()?.value ?? 0,
      );
      this.db.prepare('UPDATE records SET expires_at = ?').run(now + maxLease);
    }
    this.db
      .prepare(
        "INSERT INTO meta (key, value) VALUES ('clock', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
      )
      .run(this.clock.name);
  }

  /** Every target's bytes (for a final check). */
  targets(): Array<{ target: string; data: Uint8Array }> {
    return (
      this.db
        // Not the rows that only keep a target's owner (a target opened and never written).
        .prepare<[], { target: string; size: number }>(
          'SELECT target, size FROM target_versions WHERE size > 0 OR version > 0 ORDER BY target',
        )
        .all()
        .map((r) => ({ target: r.target, data: r.size === 0 ? new Uint8Array(0) : this.assemble(r.target, 0, r.size) }))
    );
  }

  /** Every history line, in commit order. */
  readHistory(): string[] {
    return this.db
      .prepare<[], { line: string }>('SELECT line FROM history ORDER BY seq')
      .all()
      .map((r) => r.line);
  }

  /** Takes the write lock and lets go: a store another process keeps locked counts as unavailable. */
  /** A write that changes nothing: a store that can be read but not written (read-only) is not available. */
  async ping(): Promise<void> {
    this.tx(() => this.touch.run());
  }

  async shutdown(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

const isBusy = (err: unknown) => /^SQLITE_BUSY/.test(String((err as { code?: unknown } | null)?.code));

/** Run `fn` until it does not fail busy, sleeping between tries (only while opening: nothing is served yet). */
function whileBusy(deadline: number, fn: () => void): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let delay = 1; ; delay = Math.min(2 * delay, 50)) {
    try {
      return fn();
    } catch (err) {
      if (!isBusy(err) || Date.now() >= deadline) throw err;
      Atomics.wait(pause, 0, 0, delay);
    }
  }
}

function toStoreError(err: unknown): unknown {
  const code = (err as { code?: unknown }).code;
  // Another process holds the write lock: the transaction never began, TxStore may retry it later.
  if (isBusy(err)) return new StoreBusyError(`sqlite: ${String(code)}: ${(err as Error).message}`);
  // An I/O error may strike at the commit after the log took the transaction's frames: it may be
  // found committed when the database is opened again, so it is no proof that nothing was applied.
  if (typeof code === 'string' && UNAVAILABLE_CODES.test(code))
    return new StoreUnavailableError(`sqlite: ${code}: ${(err as Error).message}`, {
      maybeApplied: code.startsWith('SQLITE_IOERR'),
    });
  if (err instanceof TypeError && /database connection is not open/.test(err.message))
    return new StoreUnavailableError('sqlite: database is closed');
  return err;
}
