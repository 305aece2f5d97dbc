/** One fuzz connection's plumbing: the run it belongs to, its frames' draw and count, and its opening and end. */
import { seededRandom } from '../actors/env.js';
import { type MessageOf } from '../transport/messages.js';
import { RawConn } from './fuzz-conn.js';
import { Frame, GenContext, Rng, connectionSeed } from './fuzz-frames.js';
import { sleep } from './fuzz-procs.js';
import { ConnPlan, Tallies } from './fuzz-plan.js';

/** Frames a session sends before it waits for their answers: at most this many are in flight when the replica closes it. */
export const MAX_WAVE = 32;
export const bump = (t: Record<string, number>, k: string, n = 1) => void (t[k] = (t[k] ?? 0) + n);
/** Answers a replica may send unasked; never counted as the answer to a frame. */
export const UNSOLICITED = new Set(['notice', 'revoked']);
export const WRONG_SECRET = 'not-the-cluster-secret-not-the-cluster-secret';

export interface Run {
  url: string;
  maxNestingBytes: number;
  secret: string;
  seed: number;
  answerTimeoutMs: number;
  t: Tallies;
  legit: { target: string; requestId: string } | undefined;
  /** Frames still to send. */
  remaining: number;
  stopping: boolean;
  live: Set<RawConn>;
  /** An `auth` of an earlier session, replayed on a later handshake. */
  lastAuth: MessageOf<'auth'> | undefined;
  onSent: () => void;
}

export function context(run: Run, p: ConnPlan): GenContext {
  let id = 0;
  return {
    rng: new Rng(seededRandom(connectionSeed(run.seed, p.index))),
    nextId: () => ++id,
    usedIds: new Set(),
    legit: run.legit,
    maxNestingBytes: run.maxNestingBytes,
  };
}

/** Count a frame sent; false (and nothing sent) if the connection is no longer open. */
export function sendCounted(run: Run, conn: RawConn, f: Frame, pre: boolean): boolean {
  if (!conn.send(f)) return false;
  const t = run.t;
  t.framesSent++;
  if (pre) t.preAuthFrames++;
  else t.postAuthFrames++;
  bump(t.framesByKind, pre ? `pre:${f.kind}` : f.kind);
  run.remaining = Math.max(0, run.remaining - 1);
  run.onSent();
  return true;
}

export async function open(run: Run, p: ConnPlan): Promise<RawConn | undefined> {
  run.t.connections++;
  const c = await RawConn.connect(run.url, 5000);
  if (typeof c === 'string') {
    if (!run.stopping) {
      run.t.refusedByLimit++;
      run.t.finding(`connection #${p.index} refused before open: ${c}`);
      await sleep(50);
    }
    return undefined;
  }
  run.live.add(c);
  return c;
}

export function finish(run: Run, conn: RawConn): void {
  run.live.delete(conn);
  if (conn.closed && !conn.byUs) bump(run.t.closedByReplica, String(conn.closeCode));
  if (!conn.closed) conn.terminate();
}
