/**
 * The etcd store's leases: one per session and TTL, granted on first use, kept alive by renewals, and
 * kept alive before a commit puts a lock on one that might lapse first (store/leases.ts judges when).
 */
import * as leases from './leases.js';
import { EtcdConnection, LeaseLost } from './etcd-connection.js';
import { StoreUnavailableError } from './types.js';

/** Keep-alives one commit may wait for before its lease counts as one etcd cannot keep alive in time. */
const MAX_LEASE_REFRESHES = 3;

/** One session's lease for one TTL: its id once granted, and what this store knows of when it lapses. */
interface Lease {
  id: Promise<string>;
  /** The id, once granted. */
  granted: string | undefined;
  ttl: number;
  times: leases.LeaseTimes;
  /** A keep-alive on its way (one at a time per lease). */
  refreshing: Promise<boolean> | undefined;
}

/** The store's connection, and the leases its locks hang on. */
export class EtcdLeases extends EtcdConnection {
  /** Each session's lease (by session and TTL in seconds), and when it was last kept alive. */
  protected readonly leases = new Map<string, Lease>();

  /**
   * The TTL in whole seconds of the lease for locks that last `leaseMs`: at least long enough that a
   * lease just kept alive still lives a renewal interval after a commit that takes the whole call
   * timeout (store/leases.ts), so a lock can always be put on it.
   */
  protected ttlOf(leaseMs: number): number {
    return leases.ttlSeconds(leaseMs, this.timeoutMs);
  }

  /** The lease of `session` for `ttl` seconds, granted on first use. */
  protected leaseOf(session: string, ttl: number): Promise<string> {
    const key = `${session}/${ttl}`;
    const have = this.leases.get(key);
    if (have) return have.id;
    // The TTL starts when etcd grants it: after this send, before the answer.
    const entry: Lease = {
      id: Promise.resolve(''),
      granted: undefined,
      ttl,
      times: { ttlMs: ttl * 1000, sentAt: Date.now(), answeredAt: undefined },
      refreshing: undefined,
    };
    entry.id = this.call('lease grant', () => this.client.leaseClient.leaseGrant({ TTL: ttl, ID: 0 })).then((r) => {
      this.stats.grants++;
      entry.times.answeredAt = Date.now();
      entry.granted = String(r.ID);
      return entry.granted;
    });
    this.leases.set(key, entry);
    entry.id.catch(() => this.leases.get(key) === entry && this.leases.delete(key));
    return entry.id;
  }

  /**
   * Keep a lease alive once (a keep-alive already on its way is joined); false if etcd let it lapse,
   * and then it is forgotten. Its times move only by a keep-alive that etcd answered alive.
   */
  protected refresh(key: string, entry: Lease, id: string): Promise<boolean> {
    entry.refreshing ??= (async () => {
      const sentAt = Date.now();
      try {
        const alive = await this.keepAlive(id);
        if (alive)
          entry.times = {
            ttlMs: entry.ttl * 1000,
            sentAt: Math.max(sentAt, entry.times.sentAt),
            answeredAt: Date.now(),
          };
        else if (this.leases.get(key) === entry) this.leases.delete(key);
        return alive;
      } finally {
        entry.refreshing = undefined;
      }
    })();
    return entry.refreshing;
  }

  /**
   * Before a commit that puts locks on these leases (by key, with the id each lock goes on): each
   * must surely live a renewal interval past the time the commit can land (its call's deadline), or
   * it is kept alive first. A lease that lapsed, or was forgotten meanwhile, throws LeaseLost (the
   * items are decided again, on a new lease).
   */
  protected async leasesFresh(used: Map<string, string>): Promise<void> {
    await Promise.all(
      [...used].map(async ([key, id]) => {
        for (let i = 0; ; i++) {
          const entry = this.leases.get(key);
          if (!entry || entry.granted !== id) throw new LeaseLost(`etcd: lease ${id} was given up`);
          if (leases.canCarry(entry.times, Date.now() + this.timeoutMs)) return;
          if (i === MAX_LEASE_REFRESHES)
            throw new StoreUnavailableError(
              `etcd: lease ${id} could not be kept alive long enough to carry a lock (keep-alives too slow for a TTL of ${entry.ttl} s)`,
            );
          if (!(await this.refresh(key, entry, id))) throw new LeaseLost(`etcd: lease ${id} lapsed`);
        }
      }),
    );
  }

  /** Keep a lease alive once; false if etcd let it lapse. */
  protected async keepAlive(id: string): Promise<boolean> {
    this.stats.keepAlives++;
    const res = await this.call('lease keep-alive', async () => {
      const stream = await this.client.leaseClient.leaseKeepAlive();
      try {
        return await new Promise<{ TTL: string }>((resolve, reject) => {
          stream.on('data', resolve);
          stream.on('error', reject);
          stream.write({ ID: id });
        });
      } finally {
        stream.end();
      }
    });
    return Number(res.TTL) > 0;
  }

  /** Forget leases that surely lapsed (judged from when etcd last answered for them), and those of a session known lost. */
  protected forgetLeases(lost?: string): void {
    const now = Date.now();
    for (const [key, l] of this.leases)
      if ((lost !== undefined && key.startsWith(`${lost}/`)) || leases.surelyLapsed(l.times, now))
        this.leases.delete(key);
  }
}
