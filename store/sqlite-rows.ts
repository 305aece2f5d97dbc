/** The SQLite store's rows as the store's types: a target's record and its access, and the queries that read them. */
import { type Grant, type LockRecord, type TargetAccess } from './types.js';

export interface RecordRow {
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

export const SELECT_RECORD = 'SELECT * FROM records WHERE target = ?';
export const SELECT_TOMBSTONES = 'SELECT list FROM tombstones WHERE target = ?';
/** A target's owner (NULL: none recorded, a target of an earlier version) and access list (JSON), kept with its version. */
export const SELECT_ACCESS = 'SELECT owner, grants FROM target_versions WHERE target = ?';

export interface AccessRow {
  owner: string | null;
  grants: string;
}

export const accessOfRow = (r: AccessRow | undefined): TargetAccess | undefined =>
  r && r.owner !== null ? { owner: r.owner, grants: JSON.parse(r.grants) as Grant[] } : undefined;

export function recordOf(r: RecordRow): LockRecord {
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
