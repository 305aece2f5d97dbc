/**
 * The fuzzer (bench/fuzz.ts) against a real replica process, while a legitimate application writes
 * and reads through it. The replica and the application run from dist/: `npm test` builds first
 * (for a run of this file alone: `npm run build && npx vitest run test/fuzz.test.ts`).
 */
import { describe, expect, it } from 'vitest';
import { failures, formatFuzzReport, MAX_WAVE, runFuzz } from '../bench/fuzz.js';

describe('fuzz: malformed frames against a live replica', () => {
  it('10,000 frames over 100+ connections: no crash, every frame answered with its code, the application unharmed', async () => {
    const r = await runFuzz({ frames: 10_000, connections: 120, concurrency: 40, seed: 20261201, deadlineMs: 45_000 });
    const report = formatFuzzReport(r);
    expect(failures(r), report).toEqual([]);
    expect(r.ok, report).toBe(true);
    expect(report).toMatch(/^safe-resume fuzz: PASS/);

    // The replica lived through it and still serves a fresh session.
    expect(r.crashes, report).toBe(0);
    expect(r.aliveAtEnd, report).toBe(true);
    expect(r.timedOut, report).toBe(false);

    // The legitimate application kept writing and reading (bytes verified) without one failure.
    expect(r.legit.failures, report).toBe(0);
    expect(r.legit.ops, report).toBeGreaterThan(100);

    expect(r.framesSent).toBe(10_000);
    expect(r.framesSent).toBe(r.preAuthFrames + r.postAuthFrames + r.brokenSeals);
    expect(r.connections).toBeGreaterThanOrEqual(120);
    expect(r.preAuthConnections).toBeGreaterThan(10);
    expect(r.sessions).toBeGreaterThan(50);

    // Every post-authentication frame was answered, or sent while the replica was closing that
    // session for too many bad frames (4002): at most one wave per closed session.
    expect(r.unanswered, report).toBe(0);
    expect(r.answered + r.absorbedByClose).toBe(r.postAuthFrames);
    const closes = Object.entries(r.closedByReplica)
      .filter(([code]) => code !== '4001')
      .reduce((s, [, k]) => s + k, 0);
    expect(r.absorbedByClose).toBeLessThanOrEqual(MAX_WAVE * closes);
    expect(r.answered).toBeGreaterThan(0.9 * r.postAuthFrames);
    expect(r.closedByReplica['4002'], report).toBeGreaterThan(0);
    // ... and with the code predicted for it (the codec's own verdict, or NOT_OPEN, FORBIDDEN, ...).
    expect(r.unpredictedAnswers, report).toBe(0);
    for (const code of ['BAD_FRAME', 'UNKNOWN_TYPE', 'NOT_OPEN', 'FORBIDDEN', 'AUTH_FAILED'])
      expect(r.errorsByCode[code] ?? 0, code).toBeGreaterThan(0);
    expect(r.errorsByCode.INTERNAL).toBeUndefined();
    expect(r.invalidReplies).toBe(0);

    // Sealed sessions: the same answers under the MAC, every reply sealed, and a broken seal drops the session.
    expect(r.sealedSessions).toBeGreaterThan(5);
    expect(r.brokenSeals).toBeGreaterThan(0);
    expect(r.brokenSealsKept, report).toBe(0);

    // Garbage before authentication was refused and its connection closed.
    expect(r.preAuthUnrefused, report).toBe(0);
    expect(r.handshakeFailures, report).toBe(0);
    expect(r.closedByReplica['4001'], report).toBeGreaterThan(0);
    expect(r.replica.logErrors, report).toBe(0);
  }, 60_000);

  it('reports a replica that dies during the run as a crash and the run as failed', async () => {
    const r = await runFuzz({
      frames: 3000,
      connections: 30,
      concurrency: 10,
      seed: 7,
      killReplicaAtFrame: 500,
      settleMs: 0,
      deadlineMs: 30_000,
    });
    expect(r.crashes).toBe(1);
    expect(r.crash).toMatch(/SIGKILL/);
    expect(r.aliveAtEnd).toBe(false);
    // Its handle paused when the replica went: a legitimate failure.
    expect(r.legit.failures).toBeGreaterThan(0);
    expect(r.ok).toBe(false);
    expect(failures(r).join('\n')).toMatch(/replica crashed/);
    expect(formatFuzzReport(r)).toMatch(/^safe-resume fuzz: FAIL/);
  }, 45_000);
});
