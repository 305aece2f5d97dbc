/**
 * Who may open a target and who changes that: its owner and access list (recorded, or derived for a
 * target of an earlier version), and the rule that grants and revokes access.
 */
import { LEGACY_OWNER, MAX_GRANTS, type AccessRequest, type AccessResult, type TargetAccess } from './types.js';
import { none, type Decision, type TargetView } from './rules-view.js';

/**
 * The one answer to a request the asker has no access for: the same text for every target and every
 * reason (another principal owns it, or the asker may read but not write it, or may not change who
 * may), so it tells nothing of who owns the target. (A name nobody has is not refused: an open creates
 * it.)
 */
export const NO_ACCESS =
  'not permitted: a target is opened only by its owner and the principals it granted access, and only its owner (or the operator) changes who may';

/**
 * Who may open the target: its recorded access; for a target written by an earlier version (which
 * kept no owner), the principal of its lock record, else of its newest tombstone that names one, else
 * LEGACY_OWNER, recorded with the first change the rules make to the target, so it never moves to
 * whoever comes next. Undefined: nobody has the target (no record, tombstone, data or size), and an
 * open creates it.
 */
export function accessOf(v: TargetView): TargetAccess | undefined {
  if (v.access) return v.access;
  if (v.record) return { owner: v.record.principal, grants: [] };
  if (v.version === 0 && v.fixedSize === 0 && v.tombstones().length === 0) return undefined;
  return { owner: v.tombstones().find((t) => t.principal !== undefined)?.principal ?? LEGACY_OWNER, grants: [] };
}

/** Whether `principal` may open a target of `access` in `mode`: its owner in either, a grantee of write in either, of read for reading. */
export function mayOpen(access: TargetAccess, principal: string, mode: 'read' | 'write'): boolean {
  if (access.owner === principal) return true;
  const g = access.grants.find((x) => x.principal === principal);
  return g !== undefined && (mode === 'read' || g.mode === 'write');
}

export /** A decision that changes a target whose access was derived, not recorded (an earlier version's), records it too. */
function settled<T>(v: TargetView, d: Decision<T>): Decision<T> {
  if (d.effects.length === 0 || v.access) return d;
  const access = accessOf(v);
  return access ? { out: d.out, effects: [...d.effects, { kind: 'access', access }] } : d;
}

/**
 * Grant `req.principal` access to the target (`mode`, replacing what it had) or revoke it (`none`).
 * Only the owner, or the operator (`by` undefined), may; anyone else is refused NO_ACCESS, whether or
 * not the target exists. The operator is told when it does not. The owner's own access is not in the
 * list. A revocation applies to the grantee's next open or resume: a handle it has open keeps its lock
 * (and a read handle its reads) until it closes, pauses or loses it.
 */
export function decideAccess(v: TargetView, req: AccessRequest): Decision<AccessResult> {
  const refuse = (message: string) => none<AccessResult>({ ok: false, code: 'INVALID_ARGUMENT', message });
  const access = accessOf(v);
  if (req.by !== undefined && access?.owner !== req.by)
    return none({ ok: false, code: 'FORBIDDEN', message: NO_ACCESS });
  if (!access) return refuse(`${req.target} does not exist: nobody has opened it`);
  if (req.mode !== 'none' && req.mode !== 'read' && req.mode !== 'write')
    return refuse(`mode must be read, write or none, not ${String(req.mode)}`);
  if (req.principal.length === 0) return refuse('a principal must be named');
  if (req.principal === access.owner)
    return refuse(`${req.principal} owns ${req.target}: an owner's access is neither granted nor revoked`);
  const had = access.grants.find((g) => g.principal === req.principal);
  if (v.access && (req.mode === 'none' ? !had : had?.mode === req.mode)) return none({ ok: true, access });
  const grants = access.grants.filter((g) => g.principal !== req.principal);
  if (req.mode !== 'none') grants.push({ principal: req.principal, mode: req.mode });
  if (grants.length > MAX_GRANTS)
    return refuse(
      `${req.target} already grants ${MAX_GRANTS} principals access, as many as a target may: revoke one first`,
    );
  const next: TargetAccess = { owner: access.owner, grants };
  return { out: { ok: true, access: next }, effects: [{ kind: 'access', access: next }] };
}
