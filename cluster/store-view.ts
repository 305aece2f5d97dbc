/**
 * The launcher's own view of the store its replicas run over: what it holds of a target (its lock,
 * tombstones, access list), read within 2 s on a client of its own, and the store's half of a chaos
 * run's history. SQLite is read through its file, etcd through a client with the store's certificate.
 */
import { SafeResumeError } from '../errors.js';
import { findRequestSqlite, peekSqlite, SqliteStore } from '../store/sqlite.js';
import { EtcdStore } from '../store/etcd.js';
import { openStore, parseStoreSpec } from '../store/open.js';
import type { LockRecord, TargetAccess, Tombstone } from '../store/types.js';

/** Where the store is: its spec (sqlite:PATH or etcd://...), the SQLite file, and how to reach etcd. */
export interface StoreAt {
  spec: string;
  dbPath: string;
  etcd: { tls?: { ca: Buffer; cert: Buffer; key: Buffer } };
}

export class StoreView {
  /** `at`: read at each call (the store is known once the cluster has started). */
  constructor(private readonly at: () => StoreAt) {}

  /** The target's lock record and tombstones, read from the store, and the store's now when its clock can be read here. */
  async holder(
    target: string,
  ): Promise<{ record: LockRecord | undefined; tombstones: Tombstone[]; now: number | undefined }> {
    const { targets, now } = await this.peek([target], false);
    return { ...targets.get(target)!, now };
  }

  /** Who may open the target (its owner and access list; rules.accessOf), read from the store within 2 s. */
  async accessOf(target: string): Promise<TargetAccess | undefined> {
    const at = this.at();
    if (parseStoreSpec(at.spec).kind === 'sqlite') return peekSqlite(at.dbPath, [target]).access.get(target);
    return this.withStore((store) => store.access(target));
  }

  /** Run `fn` on a client of the store of its own (etcd's, or a connection to the SQLite file), given up after 2 s. */
  async withStore<T>(fn: (store: ReturnType<typeof openStore>) => Promise<T>): Promise<T> {
    const at = this.at();
    const spec = parseStoreSpec(at.spec);
    const store = spec.kind === 'sqlite' ? new SqliteStore(at.dbPath) : openStore(at.spec, { etcd: at.etcd });
    let timer: NodeJS.Timeout | undefined;
    try {
      const done = await Promise.race([
        fn(store).then((v) => ({ v })),
        new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 2000))),
      ]);
      if (!done) throw new SafeResumeError('UNAVAILABLE', 'the store did not answer within 2 s');
      return done.v;
    } finally {
      clearTimeout(timer);
      void store.shutdown().catch(() => undefined);
    }
  }

  /**
   * What the store holds of `targets`, for inspection, within 2 s. SQLite is read through a read-only
   * connection that waits for nothing (a replica holding the write lock cannot stall the launcher);
   * etcd through a client of its own, with each lock's time left from its session lease (`left`);
   * etcd's records are on the wall clock, so no store clock is returned for it (`now`).
   */
  async peek(
    targets: string[],
    withLeft: boolean,
  ): Promise<{
    targets: Map<string, { record: LockRecord | undefined; tombstones: Tombstone[]; left?: number }>;
    now: number | undefined;
  }> {
    const at = this.at();
    if (parseStoreSpec(at.spec).kind === 'sqlite') {
      const p = peekSqlite(at.dbPath, targets);
      return {
        targets: new Map(targets.map((t) => [t, { record: p.records.get(t), tombstones: p.tombstones.get(t) ?? [] }])),
        now: p.now,
      };
    }
    const store = openStore(at.spec, { etcd: at.etcd });
    let timer: NodeJS.Timeout | undefined;
    try {
      const read = Promise.all(
        targets.map(async (t) => {
          const [record, tombstones, left] = await Promise.all([
            store.record(t),
            store.tombstones(t),
            withLeft && store instanceof EtcdStore ? store.lockLeftMs(t) : undefined,
          ]);
          return [t, { record, tombstones, ...(left !== undefined ? { left } : {}) }] as const;
        }),
      );
      const found = await Promise.race([
        read,
        new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 2000))),
      ]);
      if (!found) throw new Error('the store did not answer within 2 s');
      return { targets: new Map(found), now: undefined };
    } finally {
      clearTimeout(timer);
      void store.shutdown().catch(() => undefined);
    }
  }

  /** The target a requestId holds or held, from a SQLite store itself (its records and tombstones); undefined over etcd or if it does not know it. */
  targetOfRequest(requestId: string): string | undefined {
    const at = this.at();
    if (parseStoreSpec(at.spec).kind !== 'sqlite') return undefined;
    try {
      return findRequestSqlite(at.dbPath, requestId);
    } catch (err) {
      throw new SafeResumeError('UNAVAILABLE', `the store cannot be read: ${(err as Error).message}`);
    }
  }

  /** The store's half of the history (commit order) and the final bytes of every target. */
  async history(): Promise<{ events: unknown[]; finals: Array<{ target: string; bytes: string }> }> {
    const at = this.at();
    const latin1 = (ts: Array<{ target: string; data: Uint8Array }>) =>
      ts.map((t) => ({ target: t.target, bytes: Buffer.from(t.data).toString('latin1') }));
    const spec = parseStoreSpec(at.spec);
    if (spec.kind === 'etcd') {
      const store = new EtcdStore(spec.endpoints, { ...at.etcd, timeoutMs: 10_000 });
      try {
        const events = (await store.readLog()).map((l) => JSON.parse(l) as unknown);
        return { events, finals: latin1(await store.targets()) };
      } finally {
        await store.shutdown();
      }
    }
    const store = new SqliteStore(at.dbPath);
    try {
      const events = store.readHistory().map((l) => JSON.parse(l) as unknown);
      return { events, finals: latin1(store.targets()) };
    } finally {
      void store.shutdown();
    }
  }
}
