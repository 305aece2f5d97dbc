/**
 * The embedded durable store: SQLite through better-sqlite3 in WAL mode. Every rule runs in a
 * BEGIN IMMEDIATE transaction, so several replica processes on one host can share the file safely.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { StoreBusyError, TxStore } from './base.js';
import { hostClock, type HostClock } from './host-clock.js';
import { type Tx } from './rules.js';
import { createSchema } from './sqlite-schema.js';
import {
  accessOfRow,
  recordOf,
  SELECT_ACCESS,
  SELECT_RECORD,
  SELECT_TOMBSTONES,
  type AccessRow,
  type RecordRow,
} from './sqlite-rows.js';
import {
  MAX_DISK_BYTES,
  PAGE_BYTES,
  StoreUnavailableError,
  isZeroPage,
  type LockRecord,
  type Tombstone,
} from './types.js';

export { findRequestSqlite, peekSqlite } from './sqlite-peek.js';

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
      whileBusy(deadline, () => this.db.transaction(() => createSchema(this.db, this.clock)).immediate());
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
      'INSERT INTO pages (target, page, data, version) VALUES (?, ?, ?, ?) ON CONFLICT(target, page) DO UPDATE SET data = excluded.data, version = excluded.version',
    );
    const deletePage = this.db.prepare('DELETE FROM pages WHERE target = ? AND page = ?');
    // A freed page's version is kept (a tombstone, one per page number at most): its freeing is a change.
    const freePage = this.db.prepare('INSERT OR REPLACE INTO freed_pages (target, page, version) VALUES (?, ?, ?)');
    const changedPages = this.db.prepare<[string, number, string, number, number], { page: number }>(
      'SELECT page FROM pages WHERE target = ? AND version > ? UNION SELECT page FROM freed_pages WHERE target = ? AND version > ? ORDER BY page LIMIT ?',
    );
    const changesFrom = this.db.prepare<[string], { v: number }>(
      'SELECT changes_from AS v FROM target_versions WHERE target = ?',
    );
    const keptPages = this.db.prepare<[string, number, number, number], { page: number }>(
      'SELECT page FROM pages WHERE target = ? AND page BETWEEN ? AND ? ORDER BY page LIMIT ?',
    );
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
          if (isZeroPage(bytes)) {
            deletePage.run(t, page);
            freePage.run(t, page, version);
          } else putPage.run(t, page, bytes, version);
        }
        putMeta.run(t, Math.max(meta?.size ?? 0, end), version);
        return version;
      },
      keptPages: (t, first, last, max) => keptPages.all(t, first, last, max).map((r) => r.page),
      changedPages: (t, since, max) =>
        since < (changesFrom.get(t)?.v ?? 0) ? undefined : changedPages.all(t, since, t, since, max).map((r) => r.page),
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
