/** The fuzz run's plan (who does what, drawn from the seed before anything runs) and the tallies every connection adds to. */
import { seededRandom } from '../actors/env.js';
import { Rng } from './fuzz-frames.js';

export type PreScenario =
  | 'junk-first'
  | 'bad-hello'
  | 'oversized-first'
  | 'half-handshake'
  | 'junk-after-challenge'
  | 'wrong-node-proof'
  | 'forged-credential'
  | 'replayed-auth'
  | 'wrong-principal-proof'
  | 'hello-twice'
  | 'silent'
  | 'invalid-utf8';

export const PRE_SCENARIOS: ReadonlyArray<readonly [number, PreScenario]> = [
  [28, 'junk-first'],
  [12, 'bad-hello'],
  [2, 'oversized-first'],
  [12, 'half-handshake'],
  [10, 'junk-after-challenge'],
  [8, 'wrong-node-proof'],
  [4, 'forged-credential'],
  [4, 'replayed-auth'],
  [8, 'wrong-principal-proof'],
  [5, 'hello-twice'],
  [4, 'silent'],
  [3, 'invalid-utf8'],
];

export interface ConnPlan {
  index: number;
  kind: 'pre' | 'post';
  scenario: PreScenario;
  /**
   * Post-authentication: mixed frames; only codec-level garbage until the replica closes the session
   * (4002); or mixed frames on a sealed session, which may end with a broken seal.
   */
  style: 'mixed' | 'flood' | 'sealed';
  budget: number;
}

/** Who does what, drawn from the seed before anything runs. */
export function buildPlan(seed: number, frames: number, connections: number): { plan: ConnPlan[]; share: number } {
  const r = new Rng(seededRandom(seed));
  const plan: ConnPlan[] = [];
  for (let i = 0; i < connections; i++) {
    plan.push({
      index: i,
      kind: r.chance(0.3) ? 'pre' : 'post',
      scenario: r.weighted(PRE_SCENARIOS),
      style: r.weighted([
        [10, 'flood'],
        [25, 'sealed'],
        [65, 'mixed'],
      ] as const),
      budget: 0,
    });
  }
  const pre = plan.filter((p) => p.kind === 'pre').length;
  const posts = plan.length - pre;
  const share = posts > 0 ? Math.max(1, Math.round((frames - pre * 2) / posts)) : Math.max(1, frames);
  for (const p of plan)
    if (p.kind === 'post')
      p.budget =
        p.style === 'flood' ? Math.max(share, 110 + r.int(60)) : Math.max(1, Math.round(share * (0.5 + r.next())));
  return { plan, share };
}

/** What every connection adds to; one object, one event loop. */
export class Tallies {
  framesSent = 0;
  preAuthFrames = 0;
  postAuthFrames = 0;
  connections = 0;
  preAuthConnections = 0;
  sessions = 0;
  refusedByLimit = 0;
  answered = 0;
  absorbedByClose = 0;
  unanswered = 0;
  unpredictedAnswers = 0;
  preAuthUnrefused = 0;
  handshakeFailures = 0;
  invalidReplies = 0;
  sealedSessions = 0;
  brokenSeals = 0;
  brokenSealsKept = 0;
  readonly errorsByCode: Record<string, number> = {};
  readonly otherAnswers: Record<string, number> = {};
  readonly closedByReplica: Record<string, number> = {};
  readonly framesByKind: Record<string, number> = {};
  readonly preAuthScenarios: Record<string, number> = {};
  readonly findings: string[] = [];

  finding(line: string): void {
    if (this.findings.length < 30) this.findings.push(line);
  }
}
