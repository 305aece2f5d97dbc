/**
 * The guarantees the history checker verifies (SPEC S1-S5, L1-L3), what a violation of one says, and
 * the checker's options.
 */

export type Guarantee = 'S1' | 'S2' | 'S3' | 'S4' | 'S5' | 'L1' | 'L2' | 'L3';

export interface Violation {
  guarantee: Guarantee;
  t: number;
  target?: string;
  message: string;
}

export const GUARANTEES: Record<Guarantee, string> = {
  S1: 'safe resume: a granted resume implies no other writer wrote since the grant (for a reader: since the version it saw)',
  S2: 'fencing: every applied write came from the record holder through its current session',
  S3: 'durability: every acknowledged write was applied and stays readable',
  S4: 'exactly once: every write is applied at most once',
  S5: 'truthful outcomes: a write that rejects with a code meaning "not applied" is never applied',
  L1: 'no needless denial: MODIFIED only if another writer took the target, SUPERSEDED only if another instance of the requestId was granted',
  L2: 'no stuck pause: once storage is reachable, every paused handle leaves paused',
  L3: 'progress: every operation completes',
};

/** How long after every fault healed a paused handle may still time out (its timer started before). */
export const HEAL_GRACE_MS = 3000;

export interface CheckOptions {
  /**
   * The hold period the replicas were given: a writer's lock lasts at least this long after the
   * store last extended it, so a takeover sooner breaks the hold (L1). Unchecked when absent.
   */
  holdMs?: number;
  /**
   * The replicas' renewal interval: a lock the store grants lasts at least this long (the holder's
   * session renews it before then), so a takeover sooner, with no renewal in between, breaks it (L1).
   * Unchecked when absent.
   */
  renewMs?: number;
}
