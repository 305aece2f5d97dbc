/**
 * The etcd group: the whole safe-resume path over a three-member etcd on this machine, next to a raw
 * etcd client on the same members in the same run.
 *   - fenced 4 KiB writes per second (16 handles x 8 in flight) vs one guarded etcd transaction per
 *     write (`If owner == me Then put page`, 128 in flight), and one at a time
 *   - failover of 1,000 handles when the serving replica is SIGKILLed
 *   - resumes per second one replica grants
 *   - write latency while the etcd leader is killed (and comes back)
 */
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { EtcdMembers } from '../runtime/etcd-members.js';

const DATA = Buffer.alloc(4096, 7);
const now = () => performance.now();

/** Raw etcd: `count` guarded transactions, each putting one 4 KiB page, `inFlight` at a time. */
export async function rawEtcd(
  endpoints: string[],
  count: number,
  inFlight: number,
): Promise<{ rate: number; p50: number }> {
  const c = new Etcd3({ hosts: endpoints.map((e) => `http://${e}`) });
  const prefix = `/raw-${Math.random().toString(36).slice(2, 8)}/`;
  try {
    await c.put(`${prefix}owner`).value('me');
    const lat: number[] = [];
    let next = 0;
    const t0 = now();
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < count) {
          const i = next++;
          const t = now();
          const r = await c
            .if(`${prefix}owner`, 'Value', '==', 'me')
            .then(c.put(`${prefix}d/${i % 64}`).value(DATA))
            .commit();
          if (!r.succeeded) throw new Error('raw etcd: the guard failed');
          lat.push(now() - t);
        }
      }),
    );
    const rate = count / ((now() - t0) / 1000);
    lat.sort((a, b) => a - b);
    return { rate, p50: lat[Math.floor(lat.length / 2)] ?? 0 };
  } finally {
    await c.delete().prefix(prefix);
    c.close();
  }
}

/** Three local members for the group, stopped by the caller. */
export function etcdMembers(dir: string): Promise<EtcdMembers> {
  return EtcdMembers.start(join(dir, 'etcd'), 3);
}

/**
 * Writes through `write` (each awaited, `workers` at once) for `ms`; the etcd leader is SIGKILLed at
 * `killAt` and started again `downMs` later. Latencies of the writes done before the kill, and of every
 * write in flight at any moment of the `windowMs` after it (those the leader change could delay).
 */
export async function leaderChange(
  members: EtcdMembers,
  write: (worker: number, i: number) => Promise<unknown>,
  opts: { workers: number; ms: number; killAt: number; downMs: number; windowMs: number },
): Promise<{ before: number[]; during: number[] }> {
  const done: Array<{ start: number; end: number }> = [];
  const t0 = now();
  let killedAt = Infinity;
  const chaos = (async () => {
    await new Promise((r) => setTimeout(r, opts.killAt));
    const leader = await members.leader();
    if (!leader) throw new Error('etcd has no leader to kill');
    killedAt = now();
    members.kill(leader.id);
    await new Promise((r) => setTimeout(r, opts.downMs));
    await members.restart(leader.id);
  })();
  await Promise.all(
    Array.from({ length: opts.workers }, async (_, w) => {
      for (let i = 0; now() - t0 < opts.ms; i++) {
        const start = now();
        await write(w, i);
        done.push({ start, end: now() });
      }
    }),
  );
  await chaos;
  const before = done.filter((d) => d.end < killedAt).map((d) => d.end - d.start);
  const during = done
    .filter((d) => d.end >= killedAt && d.start < killedAt + opts.windowMs)
    .map((d) => d.end - d.start);
  return { before, during };
}
