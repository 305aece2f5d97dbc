/**
 * The embedded durable store: SQLite through better-sqlite3 in WAL mode. Every rule runs in a
 * BEGIN IMMEDIATE transaction, so several replica processes on one host can share the file safely.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { TxStore } from './base.js';
import { splice, type Tx } from './rules.js';
import { StoreUnavailableError, type LockRecord } from './types.js';

export interface SqliteStoreOptions {
  /** `FULL` (default) fsyncs every commit; `NORMAL` may lose the last commits on power loss, never on a process crash. */
  synchronous?: 'FULL' | 'NORMAL';
  /** How long a transaction waits for another process's lock before the store counts as unavailable. */
  busyTimeoutMs?: number;
}

const UNAVAILABLE_CODES = /^SQLITE_(BUSY|LOCKED|IOERR|CANTOPEN|FULL|READONLY|NOTADB|CORRUPT|PROTOCOL)/;

interface RecordRow {
  target: string;
  request_id: string;
  principal: string;
  session: string;
  expires_at: number;
  last_seq: number;
}

export class SqliteStore extends TxStore {
  readonly kind = 'sqlite';
  private readonly db: Database.Database;
  private readonly txImpl: Tx;
  private readonly run: Database.Transaction<(fn: (tx: Tx) => unknown, tx: Tx) => unknown>;

  constructor(readonly path: string, opts: SqliteStoreOptions = {}) {
    super();
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path, { timeout: opts.busyTimeoutMs ?? 5000 });
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${opts.synchronous ?? 'FULL'}`);
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS targets (target TEXT PRIMARY KEY, data BLOB NOT NULL, version INTEGER NOT NULL) STRICT;
      CREATE TABLE IF NOT EXISTS records (
        target TEXT PRIMARY KEY, request_id TEXT NOT NULL, principal TEXT NOT NULL, session TEXT NOT NULL,
        expires_at INTEGER NOT NULL, last_seq INTEGER NOT NULL) STRICT;
      CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);
    `);
    const getRecord = this.db.prepare<[string], RecordRow>('SELECT * FROM records WHERE target = ?');
    const putRecord = this.db.prepare(
      'INSERT INTO records (target, request_id, principal, session, expires_at, last_seq) VALUES (?, ?, ?, ?, ?, ?) ' +
        'ON CONFLICT(target) DO UPDATE SET request_id = excluded.request_id, principal = excluded.principal, ' +
        'session = excluded.session, expires_at = excluded.expires_at, last_seq = excluded.last_seq',
    );
    const deleteRecord = this.db.prepare('DELETE FROM records WHERE target = ?');
    const getVersion = this.db.prepare<[string], { version: number }>('SELECT version FROM targets WHERE target = ?');
    const getSize = this.db.prepare<[string], { n: number }>('SELECT length(data) AS n FROM targets WHERE target = ?');
    const getData = this.db.prepare<[string], { data: Buffer; version: number }>('SELECT data, version FROM targets WHERE target = ?');
    const readSlice = this.db.prepare<[number, number, string], { data: Buffer }>('SELECT substr(data, ?, ?) AS data FROM targets WHERE target = ?');
    const putData = this.db.prepare(
      'INSERT INTO targets (target, data, version) VALUES (?, ?, ?) ON CONFLICT(target) DO UPDATE SET data = excluded.data, version = excluded.version',
    );
    this.run = this.db.transaction((fn: (tx: Tx) => unknown, tx: Tx) => fn(tx));
    this.txImpl = {
      getRecord: (t) => {
        const r = getRecord.get(t);
        return r && { target: r.target, requestId: r.request_id, principal: r.principal, session: r.session, expiresAt: r.expires_at, lastSeq: r.last_seq };
      },
      putRecord: (r: LockRecord) => void putRecord.run(r.target, r.requestId, r.principal, r.session, r.expiresAt, r.lastSeq),
      deleteRecord: (t) => void deleteRecord.run(t),
      version: (t) => getVersion.get(t)?.version ?? 0,
      size: (t) => getSize.get(t)?.n ?? 0,
      readData: (t, offset, length) => {
        if (length === 0) return new Uint8Array(0);
        const row = readSlice.get(offset + 1, length, t);
        return row ? new Uint8Array(row.data) : new Uint8Array(0);
      },
      writeData: (t, offset, data) => {
        const cur = getData.get(t);
        const version = (cur?.version ?? 0) + 1;
        putData.run(t, splice(cur?.data ?? new Uint8Array(0), offset, data), version);
        return version;
      },
    };
  }

  protected tx<T>(fn: (tx: Tx) => T): T {
    try {
      return this.run.immediate(fn, this.txImpl) as T;
    } catch (err) {
      throw toStoreError(err);
    }
  }

  /** Append one line to the store's history table (call inside `atomically`, so it commits with the rule). */
  appendHistory(json: string): void {
    this.db.prepare('INSERT INTO history (line) VALUES (?)').run(json);
  }

  /** Every target's bytes (for a final check). */
  targets(): Array<{ target: string; data: Uint8Array }> {
    return this.db.prepare<[], { target: string; data: Buffer }>('SELECT target, data FROM targets ORDER BY target').all().map((r) => ({ target: r.target, data: new Uint8Array(r.data) }));
  }

  /** Every history line, in commit order. */
  readHistory(): string[] {
    return this.db.prepare<[], { line: string }>('SELECT line FROM history ORDER BY seq').all().map((r) => r.line);
  }

  /** Takes the write lock and lets go: a store another process keeps locked counts as unavailable. */
  async ping(): Promise<void> {
    this.tx(() => undefined);
  }

  async shutdown(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

function toStoreError(err: unknown): unknown {
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && UNAVAILABLE_CODES.test(code)) return new StoreUnavailableError(`sqlite: ${code}: ${(err as Error).message}`);
  if (err instanceof TypeError && /database connection is not open/.test(err.message)) return new StoreUnavailableError('sqlite: database is closed');
  return err;
}
