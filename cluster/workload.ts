/**
 * A workload that writes self-verifying records: each carries its application, sequence number and
 * a checksum, at offset seq * RECORD_BYTES, and is read back and checked after it is acknowledged.
 */
import { createHash } from 'node:crypto';
import type { Handle } from '../actors/application.js';
import { SafeResumeError } from '../errors.js';

export const RECORD_BYTES = 64;

export function makeRecord(app: string, seq: number): Uint8Array {
  const body = `${app} ${seq} `;
  const sum = createHash('sha256').update(body).digest('hex').slice(0, 16);
  const line = `${body}${sum}`.padEnd(RECORD_BYTES - 1, '.') + '\n';
  return new TextEncoder().encode(line.slice(-RECORD_BYTES));
}

/** Check one record; returns a description of what is wrong, or undefined when it is intact. */
export function checkRecord(bytes: Uint8Array, app: string, seq: number): string | undefined {
  const want = makeRecord(app, seq);
  if (bytes.length !== want.length) return `record ${seq}: ${bytes.length} bytes, expected ${want.length}`;
  for (let i = 0; i < want.length; i++) if (bytes[i] !== want[i]) return `record ${seq}: byte ${i} differs`;
  return undefined;
}

export interface WorkloadStats {
  acked: number;
  verified: number;
  failed: number;
  lastError: string | undefined;
}

/** Where a workload reports each operation (for chaos runs' history); ids are unique per process. */
export type OpRecorder = (e: {
  kind: 'invoke' | 'ok' | 'fail';
  id: number;
  op: 'write';
  target: string;
  requestId: string;
  bytes?: string;
  code?: string;
}) => void;

let nextOp = 0;

/** Write and verify records until `stop()` is called; returns the running stats. */
export function runWorkload(
  handle: Handle,
  app: string,
  intervalMs: number,
  record?: OpRecorder,
): { stats: WorkloadStats; stop: () => Promise<void> } {
  const stats: WorkloadStats = { acked: 0, verified: 0, failed: 0, lastError: undefined };
  let stopped = false;
  const loop = (async () => {
    for (let seq = 0; !stopped; seq++) {
      const id = ++nextOp;
      const base = { id, op: 'write' as const, target: handle.target, requestId: handle.requestId };
      try {
        const bytes = makeRecord(app, seq);
        record?.({ kind: 'invoke', ...base, bytes: Buffer.from(bytes).toString('latin1') });
        await handle.write(seq * RECORD_BYTES, bytes);
        record?.({ kind: 'ok', ...base });
        stats.acked++;
        const back = await handle.read(seq * RECORD_BYTES, RECORD_BYTES);
        const problem = checkRecord(back, app, seq);
        if (problem) throw new Error(problem);
        stats.verified++;
      } catch (err) {
        stats.failed++;
        stats.lastError = err instanceof SafeResumeError ? err.code : String(err);
        record?.({ kind: 'fail', ...base, code: stats.lastError });
        if (handle.state === 'invalidated' || handle.state === 'closed') return;
      }
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  return {
    stats,
    stop: async () => {
      stopped = true;
      await loop;
    },
  };
}
