/**
 * What the launcher says of a target from the store: why it is where it is (`explain`), each paused
 * handle's lock in `status` (`holds`), who took a target over from a denied handle (on the timeline),
 * and the lines these are told in.
 */
import { SafeResumeError } from '../errors.js';
import type { TargetAccess, Tombstone } from '../store/types.js';
import type { HandleStatus } from '../runtime/ipc.js';
import type { ControlResult } from './launcher-options.js';
import type { StoreView } from './store-view.js';
import type { TimelineEvent } from './timeline.js';

/** What explain and holds read: the cluster's status, its replicas' sessions, and the store. */
export interface Explaining {
  status(): Record<string, unknown>;
  liveSessions(): Array<{ id: string; node: string; silentMs: number; replica: string }>;
  targetOfRequest(requestId: string): Promise<string | undefined>;
  readonly store: StoreView;
  readonly storeSpec: string;
}

/**
 * Each paused or resuming handle's lock, from the store: `renewed` while the session holding it lives
 * (no hold period runs), `running` with the time left once that session is lost (`holdLeftMs`;
 * over etcd the TTL of that session's lease, in whole seconds), `lapsed` (another writer may take the target; the
 * handle's resume is granted until one does), or `taken` (another requestId holds it, or nobody).
 * Other handles get `null`; so does every handle if the store does not answer within 2 s.
 */
export async function holds(l: Explaining, handles: Array<HandleStatus & Hold>): Promise<void> {
  for (const h of handles) Object.assign(h, { hold: null, holdLeftMs: null });
  const away = handles.filter((h) => (h.state === 'paused' || h.state === 'resuming') && h.requestId).slice(0, 100);
  if (away.length === 0) return;
  const live = new Set(l.liveSessions().map((x) => x.id));
  const found = await l.store.peek([...new Set(away.map((h) => h.target))], true).catch(() => undefined);
  if (!found) return; // the store cannot be read now: the holds stay unknown (null)
  for (const h of away) {
    const { record: rec, left } = found.targets.get(h.target)!;
    if (!rec || rec.requestId !== h.requestId) h.hold = 'taken';
    else if (live.has(rec.session)) h.hold = 'renewed';
    else if (found.now === undefined)
      Object.assign(
        h,
        left === undefined
          ? { hold: 'running' }
          : left > 0
            ? { hold: 'running', holdLeftMs: left }
            : { hold: 'lapsed' },
      );
    else if (rec.expiresAt > found.now) Object.assign(h, { hold: 'running', holdLeftMs: rec.expiresAt - found.now });
    else h.hold = 'lapsed';
  }
}

/**
 * Why a target (or the handle of a requestId) is where it is: who holds its lock, whether that
 * session is alive (which replica has it, when it was last heard from), when the lock can lapse,
 * the handles on it, and the state of the store's replicas. Read from the store itself.
 */
export async function explain(l: Explaining, what: string): Promise<ControlResult> {
  const st = l.status() as {
    handles: Array<HandleStatus & { node: string }>;
    nodes: Array<{ id: string; state: string; replica: string | null; partitioned: boolean }>;
    replicas: Array<{ id: string; state: string }>;
  };
  const target = st.handles.find((h) => h.requestId === what)?.target ?? (await l.targetOfRequest(what)) ?? what;
  const { record, tombstones, now } = await l.store.holder(target).catch((err: Error) => {
    throw new SafeResumeError('UNAVAILABLE', `the store cannot be read: ${err.message}`);
  });
  const access = await l.store.accessOf(target).catch((err: Error) => {
    throw new SafeResumeError('UNAVAILABLE', `the store cannot be read: ${err.message}`);
  });
  // Nobody has the target (accessOf: no owner, record, tombstone, data or size), and no requestId is called so.
  if (!access && target === what)
    return {
      ok: false,
      code: 'NOT_FOUND',
      message: `no target or requestId called ${JSON.stringify(what)} in the store (${l.storeSpec}): nobody has opened that target, and no handle had that requestId`,
    };
  const session = record ? l.liveSessions().find((s) => s.id === record.session) : undefined;
  const handles = st.handles
    .filter((h) => h.target === target)
    .map((h) => {
      const node = st.nodes.find((n) => n.id === h.node);
      return {
        node: h.node,
        app: h.app,
        state: h.state,
        reason: h.reason,
        changed: h.changed ?? null,
        requestId: h.requestId ?? null,
        holds: record?.requestId === h.requestId,
        nodeState: node?.state ?? 'unknown',
        nodeReplica: node?.replica ?? null,
        partitioned: node?.partitioned ?? false,
      };
    });
  const leftMs = record && now !== undefined ? record.expiresAt - now : undefined;
  const lines: string[] = [target];
  if (!access) lines.push('  owner     none: nobody has opened it; the first open creates it for its principal');
  else {
    lines.push(`  owner     ${access.owner}`);
    lines.push(
      `  access    ${access.grants.length === 0 ? 'the owner only' : access.grants.map((g) => `${g.principal} ${g.mode}`).join(', ')}`,
    );
  }
  if (!record) lines.push('  lock      none: no writer holds it; a write open is granted at once');
  else {
    lines.push(
      `  holder    requestId ${record.requestId} (principal ${record.principal}, instance ${record.instance || '-'}), writes applied up to seq ${record.lastSeq}`,
    );
    if (session) {
      lines.push(
        `  session   ${record.session} on ${session.replica}, node ${session.node}, heard from ${session.silentMs} ms ago: alive, and renewing the lock`,
      );
      lines.push(
        `  lock      held while that session lives${leftMs !== undefined ? ` (if it stops renewing: ${Math.max(0, leftMs)} ms at most)` : ''}; another writer is refused LOCKED`,
      );
    } else {
      lines.push(`  session   ${record.session}: no running replica has it (lost)`);
      if (leftMs === undefined)
        lines.push("  lock      lapses when that session's lease does; then another writer may open the target");
      else if (leftMs > 0)
        lines.push(
          `  lock      the hold period runs: it lapses in ${leftMs} ms; until then the holder's resume is granted and other writers are refused LOCKED`,
        );
      else
        lines.push(
          `  lock      lapsed ${-leftMs} ms ago: another writer may open the target now (the holder's resume is granted until one does)`,
        );
    }
  }
  // The holders before: whose lock lapsed and who took the target then, or who closed it.
  for (const t of tombstones)
    lines.push(
      `  earlier   requestId ${t.requestId}, writes applied up to seq ${t.lastSeq}: ${t.takenBy ? `its lock lapsed; ${takenOver(t.takenBy, now)}` : 'closed by its holder (or taken over before the store kept who took it)'}`,
    );
  for (const h of handles) {
    const why =
      h.state === 'paused' || h.state === 'resuming'
        ? `: its node is ${h.nodeState}${h.partitioned ? ' (partitioned)' : ''}${h.nodeReplica ? ` on ${h.nodeReplica}` : ''}`
        : '';
    lines.push(
      `  handle    ${h.node}/${h.app} ${h.state}${h.reason ? ` (${h.reason})` : ''}${h.requestId ? ` requestId ${h.requestId}` : ''}${h.holds ? ', the holder' : ''}${why}`,
    );
    // What another writer changed since the handle last saw the target (its resume's denial).
    if (h.changed) lines.push(`  changed   ${h.changed}`);
  }
  lines.push(`  store     ${l.storeSpec}; ${st.replicas.map((r) => `${r.id} ${r.state}`).join(', ')}`);
  return {
    ok: true,
    target,
    owner: access?.owner ?? null,
    grants: access?.grants ?? [],
    record: record ?? null,
    earlier: tombstones.map((t) => ({ requestId: t.requestId, lastSeq: t.lastSeq, takenBy: t.takenBy ?? null })),
    session: session ?? null,
    lockLeftMs: leftMs ?? null,
    handles,
    replicas: st.replicas.map((r) => ({ id: r.id, state: r.state })),
    text: lines.join('\n'),
  };
}

/** Handle events just put on the timeline: one denied because another writer took the target says who holds it now. */
export function tellTakeovers(store: StoreView, events: Array<TimelineEvent & { kind: 'handle' }>): void {
  for (const e of events) {
    if (e.to !== 'invalidated' || e.reason !== 'MODIFIED') continue;
    void store.holder(e.target).then(
      ({ record: rec, tombstones, now }) => {
        const taken = tombstones.find((t) => t.requestId === e.requestId)?.takenBy;
        e.detail = taken
          ? `${takenOver(taken, now)}${rec && rec.requestId !== taken.requestId ? `; now held by requestId ${rec.requestId}` : ''}`
          : rec
            ? `the target is now held by requestId ${rec.requestId} (principal ${rec.principal})`
            : 'nobody holds the target now';
      },
      () => undefined,
    );
  }
}

/** A target's owner and access list, in one line. */
export function accessLine(target: string, a: TargetAccess): string {
  return `${target}: owner ${a.owner}; ${a.grants.length === 0 ? 'no other principal may open it' : `access: ${a.grants.map((g) => `${g.principal} ${g.mode}`).join(', ')}`}`;
}

/** A handle's lock as `status` tells it (see holds above). */
export interface Hold {
  hold?: 'renewed' | 'running' | 'lapsed' | 'taken' | null;
  holdLeftMs?: number | null;
}

/**
 * Who took a lapsed requestId's target, and when (UTC). `at` is on the store's clock; `storeNow`, that
 * clock now, turns it into this host's time (a SQLite store counts from boot); without it `at` is one.
 */
export function takenOver(t: NonNullable<Tombstone['takenBy']>, storeNow: number | undefined): string {
  const at = storeNow === undefined ? t.at : Date.now() - (storeNow - t.at);
  return `requestId ${t.requestId} (principal ${t.principal}) took the target over at ${new Date(at).toISOString()}`;
}
