/**
 * What the store's rules (rules.ts) judge records and tombstones by: a record handed over to a new
 * session or instance, a request too late to take it back, a record buried among the tombstones, a
 * requestId bound to another principal, and why an instance cannot resume.
 */
import {
  type LockRecord,
  RETIRED_INSTANCES,
  TOMBSTONES_PER_TARGET,
  type Tombstone,
  type ResumeOutcome,
} from './types.js';
import { type Effect, type TargetView } from './rules-view.js';

/**
 * The record on a new session, and on a new instance if `instance` differs (a takeover), at the
 * request's hand-over counter (kept as it was when the request carries none).
 */
export function handOver(
  rec: LockRecord,
  session: string,
  expiresAt: number,
  instance: string,
  epoch: number | undefined,
): LockRecord {
  const e = epoch ?? rec.epoch ?? 0;
  if (instance === rec.instance) return { ...rec, session, expiresAt, epoch: e };
  const retired = [rec.instance, ...(rec.retired ?? [])]
    .filter((i) => i !== '' && i !== instance)
    .slice(0, RETIRED_INSTANCES);
  return {
    ...rec,
    session,
    expiresAt,
    instance,
    instanceSeq: rec.lastSeq,
    prevInstance: rec.instance,
    retired,
    epoch: e,
  };
}

/**
 * Why a request that would move the record of its own requestId to `session` comes too late (undefined:
 * it does not). Hand-overs only move forward: the node numbers each open and resume of an instance with
 * a larger counter than the last, so a request carrying a smaller counter than the record's, or the
 * same one from another session, was sent on a session the node has since left (a replica or store
 * that stalled and answers late) and must not take the record back from the session in use now. An
 * open from another instance than the record's is as late: a node opens a requestId afresh only once,
 * and a later instance took it over. A takeover from another instance is not ordered by the counter
 * (instances on different nodes count apart), but one by an instance the record was taken over from
 * (`retired`) is as late. Requests and records without a counter are not checked.
 */
export function staleRequest(
  rec: LockRecord,
  session: string,
  instance: string,
  epoch: number | undefined,
  takeover: boolean,
): string | undefined {
  if (rec.instance !== instance) {
    if (rec.instance === '' || instance === '') return undefined;
    // An instance the record was taken over from, taking it back, is a late copy of its own takeover.
    if (takeover && instance !== rec.prevInstance && !(rec.retired ?? []).includes(instance)) return undefined;
    return `instance ${rec.instance} of this requestId holds the record now; instance ${instance} no longer may`;
  }
  if (epoch === undefined) return undefined;
  const held = rec.epoch ?? 0;
  if (epoch > held || (epoch === held && session === rec.session)) return undefined;
  return `a newer request of this handle (hand-over ${held}) holds the record through session ${rec.session}; this one (hand-over ${epoch}) comes from a session its node has left`;
}

/**
 * The tombstones once `rec` is buried among them (newest first, one per requestId and principal,
 * bounded), taken by `takenBy` if it lapsed. Another principal's tombstone is never replaced.
 */
export function bury(v: TargetView, rec: LockRecord, takenBy?: Tombstone['takenBy']): Effect {
  const tomb: Tombstone = {
    requestId: rec.requestId,
    principal: rec.principal,
    instance: rec.instance,
    instanceSeq: rec.instanceSeq,
    prevInstance: rec.prevInstance,
    session: rec.session,
    lastSeq: rec.lastSeq,
    ...(takenBy ? { takenBy } : {}),
  };
  const kept = v
    .tombstones()
    .filter((t) => !(t.requestId === rec.requestId && (t.principal ?? rec.principal) === rec.principal));
  const all = [tomb, ...kept];
  // Past the bound, the principal whose decision this is gives up its own oldest tombstone first: no
  // principal can push another's out (and with it the binding of a requestId) by opening and closing.
  const by = takenBy?.principal ?? rec.principal;
  while (all.length > TOMBSTONES_PER_TARGET) {
    let drop = all.length - 1;
    for (let i = all.length - 1; i > 0; i--) {
      if (all[i]!.principal === by) {
        drop = i;
        break;
      }
    }
    all.splice(drop, 1);
  }
  return { kind: 'tombstones', tombstones: all };
}

/**
 * Whether a tombstone of the target binds `requestId` to a principal other than `principal` (one
 * written before tombstones kept their principal binds it to a principal nobody can prove).
 */
export function boundElsewhere(v: TargetView, requestId: string, principal: string): boolean {
  return v.tombstones().some((t) => t.requestId === requestId && t.principal !== principal);
}

/** The newest tombstone of `requestId` that is `principal`'s (or kept no principal): another principal's is no evidence. */
export function tombOf(v: TargetView, requestId: string, principal: string): Tombstone | undefined {
  return v.tombstones().find((t) => t.requestId === requestId && (t.principal ?? principal) === principal);
}

/**
 * Why `instance` of `requestId` cannot resume, and what it had applied, judged from a record or
 * tombstone of the same requestId (or none). Another instance holding it means SUPERSEDED; the
 * instance it superseded ended at `instanceSeq`; an older one's writes are unknown.
 */
export function denial(
  held: LockRecord | Tombstone | undefined,
  instance: string,
  version: number,
): Extract<ResumeOutcome, { granted: false }> {
  if (!held) return { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version };
  if (held.instance === instance)
    return { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version, lastSeq: held.lastSeq };
  const out: Extract<ResumeOutcome, { granted: false }> = {
    granted: false,
    reason: 'SUPERSEDED',
    code: 'SUPERSEDED',
    version,
  };
  if (held.prevInstance === instance && instance !== '') out.lastSeq = held.instanceSeq;
  return out;
}
