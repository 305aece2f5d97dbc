/** The in-memory store: deterministic, for simulation and tests. */
import { TxStore } from './base.js';
import { splice, type Tx } from './rules.js';
import { StoreUnavailableError, type LockRecord } from './types.js';

interface MemoryState {
  records: Map<string, LockRecord>;
  targets: Map<string, { data: Uint8Array; version: number }>;
}

export class MemoryStore extends TxStore {
  readonly kind = 'memory';
  private available = true;
  private readonly txImpl: Tx;

  /** Pass another store's `state` to model a replica restart over the same data. */
  constructor(readonly state: MemoryState = { records: new Map(), targets: new Map() }) {
    super();
    const { records, targets } = state;
    this.txImpl = {
      getRecord: (t) => records.get(t),
      putRecord: (r) => void records.set(r.target, { ...r }),
      deleteRecord: (t) => void records.delete(t),
      version: (t) => targets.get(t)?.version ?? 0,
      size: (t) => targets.get(t)?.data.length ?? 0,
      readData: (t, offset, length) => (targets.get(t)?.data ?? new Uint8Array(0)).slice(offset, offset + length),
      writeData: (t, offset, data) => {
        const cur = targets.get(t) ?? { data: new Uint8Array(0), version: 0 };
        const next = { data: splice(cur.data, offset, data), version: cur.version + 1 };
        targets.set(t, next);
        return next.version;
      },
    };
  }

  /** Make every operation fail as unavailable (a dismounted volume) until set back. */
  setAvailable(available: boolean): void {
    this.available = available;
  }

  protected tx<T>(fn: (tx: Tx) => T): T {
    if (!this.available) throw new StoreUnavailableError('memory store is unavailable');
    return fn(this.txImpl);
  }

  async ping(): Promise<void> {
    if (!this.available) throw new StoreUnavailableError('memory store is unavailable');
  }

  async shutdown(): Promise<void> {}
}
