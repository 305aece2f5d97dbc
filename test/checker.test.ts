/** The checker on hand-written histories: a good one passes, a bad one for each guarantee is caught. */
import { describe, expect, it } from 'vitest';
import { check, Checker, type Guarantee } from '../sim/checker.js';
import type { History, HistoryEvent } from '../sim/history.js';

const X = 'X'.repeat(21);
const Y = 'Y'.repeat(21);
const T = 'vm1.disk';
const R = 'replica-1';
let t = 0;
const at = <E extends object>(e: E) => ({ t: t++, ...e }) as unknown as HistoryEvent;
const grant = (requestId: string, session: string, via: 'open' | 'resume' = 'open', fresh = via === 'open') =>
  at({ kind: 'grant', replica: R, target: T, requestId, session, mode: 'write', via, fresh, version: 0 });
const applied = (requestId: string, session: string, seq: number, bytes: string, offset = 0) =>
  at({ kind: 'applied', replica: R, target: T, requestId, session, seq, offset, bytes, version: 0 });
const deny = (requestId: string, session: string) =>
  at({ kind: 'deny', replica: R, target: T, requestId, session, mode: 'write', reason: 'MODIFIED', version: 0 });
const invoke = (id: number, proc: string, bytes?: string) =>
  at({ kind: 'invoke', id, proc, op: 'write', target: T, offset: 0, ...(bytes ? { bytes } : {}) });
const ok = (id: number, proc: string, requestId: string) =>
  at({ kind: 'ok', id, proc, op: 'write', target: T, requestId });
const state = (proc: string, requestId: string, to: string, reason?: string) =>
  at({ kind: 'state', proc, target: T, requestId, to, ...(reason ? { reason } : {}) });
const read = (offset: number, length: number, bytes: string) =>
  at({ kind: 'read', replica: R, target: T, offset, length, bytes, version: 0 });
const final = (bytes: string) => at({ kind: 'final', target: T, bytes });

/** X writes, pauses, another writer takes the target after the hold, X's resume is denied. */
function goodHistory(): History {
  t = 0;
  return [
    grant(X, 'x1'),
    invoke(1, 'p', 'aaaa'),
    applied(X, 'x1', 1, 'aaaa'),
    ok(1, 'p', X),
    state('p', X, 'paused'),
    grant(Y, 'y1'),
    applied(Y, 'y1', 1, 'bb'),
    read(0, 4, 'bbaa'),
    deny(X, 'x2'),
    state('p', X, 'invalidated', 'MODIFIED'),
    final('bbaa'),
  ];
}

const guarantees = (h: History): Guarantee[] => [...new Set(check(h).map((v) => v.guarantee))];

const fail = (id: number, proc: string, code: string) => at({ kind: 'fail', id, proc, op: 'write', target: T, code });
const grantAs = (requestId: string, session: string, instance: string, via: 'open' | 'resume' = 'open') =>
  at({
    kind: 'grant',
    replica: R,
    target: T,
    requestId,
    session,
    mode: 'write',
    via,
    fresh: via === 'open',
    version: 0,
    instance,
  });
const supersede = (requestId: string, session: string, instance: string) =>
  at({
    kind: 'deny',
    replica: R,
    target: T,
    requestId,
    session,
    mode: 'write',
    reason: 'SUPERSEDED',
    version: 0,
    instance,
  });

describe('checker: S5 and every denial reason', () => {
  it('S5: a write rejected with a "not applied" code that shows up in the data', () => {
    t = 0;
    expect(
      guarantees([grant(X, 'x1'), invoke(1, 'p', 'zz'), fail(1, 'p', 'MODIFIED'), read(0, 2, 'zz'), final('zz')]),
    ).toContain('S5');
  });

  it('S5 holds for a write rejected OUTCOME_UNKNOWN that was applied, and for a rejected one that never was', () => {
    t = 0;
    const h = [
      grant(X, 'x1'),
      invoke(1, 'p', 'zz'),
      applied(X, 'x1', 1, 'zz'),
      fail(1, 'p', 'OUTCOME_UNKNOWN'),
      invoke(2, 'p', 'qq'),
      fail(2, 'p', 'MODIFIED'),
      final('zz'),
    ];
    expect(guarantees(h)).not.toContain('S5');
  });

  it('L1: SUPERSEDED although no other instance of the requestId was granted', () => {
    t = 0;
    expect(guarantees([grantAs(X, 'x1', 'i1'), supersede(X, 'x2', 'i1')])).toContain('L1');
  });

  it('L1 holds for SUPERSEDED after another instance of the requestId took over', () => {
    t = 0;
    expect(guarantees([grantAs(X, 'x1', 'i1'), grantAs(X, 'x3', 'i2', 'resume'), supersede(X, 'x2', 'i1')])).toEqual(
      [],
    );
  });
});

describe('checker', () => {
  it('accepts a good history', () => {
    expect(check(goodHistory())).toEqual([]);
  });

  it('accepts a resume of X granted when nobody else wrote, even much later', () => {
    t = 0;
    const h = [
      grant(X, 'x1'),
      applied(X, 'x1', 1, 'a'),
      state('p', X, 'paused'),
      grant(X, 'x2', 'resume'),
      state('p', X, 'active'),
      applied(X, 'x2', 2, 'b', 1),
      final('ab'),
    ];
    expect(check(h)).toEqual([]);
  });

  it('S1: a resume granted after another writer wrote', () => {
    t = 0;
    const h = [
      grant(X, 'x1'),
      applied(X, 'x1', 1, 'a'),
      grant(Y, 'y1'),
      applied(Y, 'y1', 1, 'b'),
      grant(X, 'x2', 'resume'),
    ];
    expect(guarantees(h)).toContain('S1');
  });

  it('S2: a write applied from a fenced session', () => {
    t = 0;
    const h = [grant(X, 'x1'), grant(X, 'x2', 'open', false), applied(X, 'x1', 1, 'stale')];
    expect(guarantees(h)).toEqual(['S2']);
  });

  it('S2: a write applied from a requestId that lost the record', () => {
    t = 0;
    const h = [grant(X, 'x1'), grant(Y, 'y1'), applied(X, 'x1', 1, 'stale')];
    expect(guarantees(h)).toEqual(['S2']);
  });

  it('S3: an acknowledged write that was never applied', () => {
    t = 0;
    const h = [grant(X, 'x1'), invoke(1, 'p', 'lost'), ok(1, 'p', X)];
    expect(guarantees(h)).toEqual(['S3']);
  });

  it('S3: a read that does not return the applied writes, and a final state that lost one', () => {
    t = 0;
    expect(guarantees([grant(X, 'x1'), applied(X, 'x1', 1, 'new'), read(0, 3, 'old')])).toEqual(['S3']);
    t = 0;
    expect(guarantees([grant(X, 'x1'), applied(X, 'x1', 1, 'new'), final('')])).toEqual(['S3']);
  });

  it('S4: the same sequence number, or the same write, applied twice', () => {
    t = 0;
    expect(guarantees([grant(X, 'x1'), applied(X, 'x1', 1, 'a'), applied(X, 'x1', 1, 'a')])).toEqual(['S4']);
    t = 0;
    expect(guarantees([grant(X, 'x1'), applied(X, 'x1', 1, 'once'), applied(X, 'x1', 2, 'once')])).toEqual(['S4']);
  });

  it('L1: a resume denied MODIFIED although no other writer took the target', () => {
    t = 0;
    const h = [
      grant(X, 'x1'),
      applied(X, 'x1', 1, 'a'),
      state('p', X, 'paused'),
      deny(X, 'x2'),
      state('p', X, 'invalidated', 'MODIFIED'),
    ];
    expect(guarantees(h)).toEqual(['L1']);
  });

  it('L2: a handle still paused at the end; a crashed process is exempt', () => {
    t = 0;
    expect(guarantees([grant(X, 'x1'), state('p', X, 'paused')])).toEqual(['L2']);
    t = 0;
    expect(check([grant(X, 'x1'), state('p', X, 'paused'), at({ kind: 'crash', proc: 'p' })])).toEqual([]);
  });

  it('L3: an operation that never completed; a crashed process is exempt', () => {
    t = 0;
    expect(guarantees([grant(X, 'x1'), invoke(1, 'p')])).toEqual(['L3']);
    t = 0;
    expect(check([grant(X, 'x1'), invoke(1, 'p'), at({ kind: 'crash', proc: 'p' })])).toEqual([]);
  });
});

const invokeAt = (id: number, proc: string, offset: number, bytes: string) =>
  at({ kind: 'invoke', id, proc, op: 'write', target: T, offset, bytes });
const readInvoke = (id: number, proc: string, offset: number, length: number) =>
  at({ kind: 'invoke', id, proc, op: 'read', target: T, offset, length });
const readOk = (id: number, proc: string, bytes: string) =>
  at({ kind: 'ok', id, proc, op: 'read', target: T, requestId: X, bytes });

describe('checker: what applications read', () => {
  it('accepts a read of the last acknowledged write, and of a write still in flight', () => {
    t = 0;
    const h = [
      invokeAt(1, 'w', 0, 'aaaa'),
      ok(1, 'w', X),
      invokeAt(2, 'w', 0, 'bbbb'),
      readInvoke(3, 'r', 0, 4),
      readOk(3, 'r', 'aaaa'),
      readInvoke(4, 'r', 0, 4),
      readOk(4, 'r', 'bbbb'),
    ];
    // (The store's side is not in these histories: only what the applications saw is checked here.)
    expect(check(h).filter((v) => v.message.includes('read'))).toEqual([]);
  });

  it('S3: a stale read (an acknowledged write overwritten before the read began)', () => {
    t = 0;
    const h = [
      invokeAt(1, 'w', 0, 'aaaa'),
      ok(1, 'w', X),
      invokeAt(2, 'w', 0, 'bbbb'),
      ok(2, 'w', X),
      readInvoke(3, 'r', 0, 4),
      readOk(3, 'r', 'aaaa'),
    ];
    expect(check(h).find((v) => v.message.includes('stale read'))?.guarantee).toBe('S3');
  });

  it('S3: a read missing an acknowledged write, or returning bytes nobody wrote', () => {
    t = 0;
    expect(
      guarantees([invokeAt(1, 'w', 0, 'aaaa'), ok(1, 'w', X), readInvoke(2, 'r', 0, 4), readOk(2, 'r', '')]),
    ).toContain('S3');
    t = 0;
    expect(
      guarantees([invokeAt(1, 'w', 0, 'aaaa'), ok(1, 'w', X), readInvoke(2, 'r', 0, 4), readOk(2, 'r', 'aaXa')]),
    ).toContain('S3');
  });

  it('S3: a write seen torn across a range two writes cover', () => {
    t = 0;
    // Both writes cover [0, 4): whichever landed last is there whole, never half of each.
    const h = [
      invokeAt(1, 'w', 0, 'aaaa'),
      invokeAt(2, 'v', 0, 'bbbb'),
      readInvoke(3, 'r', 0, 4),
      readOk(3, 'r', 'aabb'),
    ];
    expect(guarantees(h)).toContain('S3');
  });

  it('reads across writes that overlap in part: each range its own write', () => {
    t = 0;
    const h = [
      invokeAt(1, 'w', 0, 'aaaa'),
      ok(1, 'w', X),
      invokeAt(2, 'w', 2, 'bbbb'),
      ok(2, 'w', X),
      readInvoke(3, 'r', 0, 6),
      readOk(3, 'r', 'aabbbb'),
    ];
    expect(check(h).filter((v) => v.message.includes('read'))).toEqual([]);
    t = 0;
    const h2 = [
      invokeAt(1, 'w', 0, 'aaaa'),
      ok(1, 'w', X),
      invokeAt(2, 'w', 2, 'bbbb'),
      ok(2, 'w', X),
      readInvoke(3, 'r', 0, 6),
      readOk(3, 'r', 'aaaabb'),
    ];
    expect(guarantees(h2)).toContain('S3');
  });

  it('S5: an application reads the bytes of a write that was rejected as not applied', () => {
    t = 0;
    const h = [invokeAt(1, 'w', 0, 'zzzz'), fail(1, 'w', 'MODIFIED'), readInvoke(2, 'r', 0, 4), readOk(2, 'r', 'zzzz')];
    expect(guarantees(h)).toContain('S5');
  });

  it('a write rejected OUTCOME_UNKNOWN may show up', () => {
    t = 0;
    const h = [
      invokeAt(1, 'w', 0, 'zzzz'),
      fail(1, 'w', 'OUTCOME_UNKNOWN'),
      readInvoke(2, 'r', 0, 4),
      readOk(2, 'r', 'zzzz'),
    ];
    expect(check(h).filter((v) => v.message.includes('read'))).toEqual([]);
  });
});

describe('checker: hold period and checking as the run goes', () => {
  const renew = (session: string) => at({ kind: 'renew', replica: R, session, targets: [T] });

  it("L1: a writer takes the target inside the previous holder's hold period", () => {
    t = 0;
    // t: 0 grant X, 1 renew, 2 grant Y: 1 ms after the last extension, with a 100 ms hold.
    expect(check([grant(X, 'x1'), renew('x1'), grant(Y, 'y1')], { holdMs: 100 }).map((v) => v.guarantee)).toEqual([
      'L1',
    ]);
    t = 0;
    expect(check([grant(X, 'x1'), renew('x1'), grant(Y, 'y1')], { holdMs: 1 })).toEqual([]);
  });

  it('reports a violation the moment its event is observed', () => {
    t = 0;
    const c = new Checker();
    c.observe(grant(X, 'x1'));
    c.observe(applied(X, 'x1', 1, 'a'));
    expect(c.violations).toEqual([]);
    c.observe(grant(Y, 'y1'));
    c.observe(applied(Y, 'y1', 1, 'b'));
    c.observe(grant(X, 'x2', 'resume'));
    expect(c.violations.map((v) => v.guarantee)).toEqual(['S1']);
  });
});

describe('checker: S5 looks where a write would have landed', () => {
  it('bytes equal to a rejected write, but elsewhere in the data (another write made them), are not that write', () => {
    t = 0;
    // "zz" was refused at offset 6; X wrote "zzzz" at 0. The data holds "zz", but not at 6: not that write.
    const h = [
      grant(X, 'x1'),
      invokeAt(1, 'p', 6, 'zz'),
      fail(1, 'p', 'MODIFIED'),
      applied(X, 'x1', 1, 'zzzz'),
      final('zzzz'),
    ];
    expect(guarantees(h)).not.toContain('S5');
  });
});

describe("checker: a reader's denial is judged against the version the store granted it", () => {
  const Z = 'Z'.repeat(21);
  const wrote = (seq: number, version: number) =>
    at({
      kind: 'applied',
      replica: R,
      target: T,
      requestId: Y,
      session: 'y1',
      seq,
      offset: 0,
      bytes: `y${seq}`,
      version,
    });
  const readOpen = (version: number) =>
    at({
      kind: 'grant',
      replica: R,
      target: T,
      requestId: Z,
      session: 'z1',
      mode: 'read',
      via: 'open',
      fresh: true,
      version,
    });
  const openInvoke = (id: number) => at({ kind: 'invoke', id, proc: 'r', op: 'open', target: T });
  const openOk = (id: number) => at({ kind: 'ok', id, proc: 'r', op: 'open', target: T, requestId: Z });
  const readDeny = (seenVersion: number, version: number) =>
    at({
      kind: 'deny',
      replica: R,
      target: T,
      requestId: Z,
      session: 'z2',
      mode: 'read',
      reason: 'MODIFIED',
      seenVersion,
      version,
    });
  /** The node acts on the denial: the application's reader is invalidated. */
  const told = () => at({ kind: 'state', proc: 'r', target: T, requestId: Z, to: 'invalidated', reason: 'MODIFIED' });
  /** Y writes versions 1-3; the reader's open is granted at version 3 and returns to the application. */
  const opened = () => [grant(Y, 'y1'), wrote(1, 1), wrote(2, 2), wrote(3, 3), openInvoke(1), readOpen(3), openOk(1)];

  it('L1: granted at version 3, nothing written since, a resume carrying version 0 denied MODIFIED', () => {
    t = 0;
    const v = check([...opened(), readDeny(0, 3), told()]);
    expect(v.map((x) => x.guarantee)).toEqual(['L1']);
    expect(v[0]!.message).toMatch(/not written after version 3.*carrying version 0, older/);
  });

  it('a needless denial nobody was told of (a late resume from a session the node left; the reader stays active) is no violation', () => {
    t = 0;
    expect(check([...openedAt1(), readResumed(3), readerActive(), readDeny(1, 3)])).toEqual([]);
    t = 0;
    // Told through a reclaim of its requestId that failed MODIFIED, it counts.
    const reclaimFailed = at({ kind: 'fail', id: 9, proc: 'r', op: 'open', target: T, requestId: Z, code: 'MODIFIED' });
    expect(guarantees([...openedAt1(), readResumed(3), readerActive(), readDeny(1, 3), reclaimFailed])).toEqual(['L1']);
  });

  it('the same denial after a write past version 3 is no violation', () => {
    t = 0;
    expect(check([...opened(), wrote(4, 4), readDeny(0, 4)])).toEqual([]);
  });

  it('an open the application was never told of (the node died before its answer) is not held against a later denial', () => {
    t = 0;
    const h = [
      grant(Y, 'y1'),
      wrote(1, 1),
      wrote(2, 2),
      wrote(3, 3),
      openInvoke(1),
      readOpen(3),
      at({ kind: 'crash', proc: 'r' }),
      readDeny(0, 3),
    ];
    expect(check(h)).toEqual([]);
  });

  const readResumed = (version: number) =>
    at({
      kind: 'grant',
      replica: R,
      target: T,
      requestId: Z,
      session: 'z2',
      mode: 'read',
      via: 'resume',
      fresh: false,
      version,
      seenVersion: version,
    });
  const readerActive = () => at({ kind: 'state', proc: 'r', target: T, requestId: Z, to: 'active' });
  const readerInvoke = (id: number) =>
    at({ kind: 'invoke', id, proc: 'r', op: 'read', target: T, requestId: Z, offset: 0, length: 2 });
  const readerOk = (id: number) => at({ kind: 'ok', id, proc: 'r', op: 'read', target: T, requestId: Z, bytes: 'y3' });
  /** Opened at version 1; Y writes versions 2 and 3. */
  const openedAt1 = () => [
    grant(Y, 'y1'),
    wrote(1, 1),
    openInvoke(1),
    readOpen(1),
    openOk(1),
    wrote(2, 2),
    wrote(3, 3),
  ];

  it("L1: a resume granted at version 3 that reached the node, then a reclaim carrying the open's version 1 denied", () => {
    t = 0;
    const v = check([...openedAt1(), readResumed(3), readerActive(), readDeny(1, 3), told()]);
    expect(v.map((x) => x.guarantee)).toEqual(['L1']);
    expect(v[0]!.message).toMatch(/not written after version 3.*carrying version 1, older/);
  });

  it('a resume grant the node never received (no active state after it) is not held against a later denial', () => {
    t = 0;
    expect(check([...openedAt1(), readResumed(3), readDeny(1, 3)])).toEqual([]);
  });

  it('a version learned from a read answer alone is not held against a later denial (its keep may not be on disk yet)', () => {
    t = 0;
    // (Y's writes are the store's side only, so the read model has nothing to compare the bytes with.)
    expect(
      check([...openedAt1(), readerInvoke(2), readerOk(2), readDeny(1, 3)]).filter((v) => v.guarantee === 'L1'),
    ).toEqual([]);
  });

  it('L1: a resume carrying the version the reader last read, denied although nothing was written after it', () => {
    t = 0;
    // Opened at version 1, read on to version 3: the carried version is the one that counts.
    const h = [
      grant(Y, 'y1'),
      wrote(1, 1),
      openInvoke(1),
      readOpen(1),
      openOk(1),
      wrote(2, 2),
      wrote(3, 3),
      readDeny(3, 3),
      told(),
    ];
    expect(guarantees(h)).toEqual(['L1']);
    t = 0;
    expect(
      check([
        grant(Y, 'y1'),
        wrote(1, 1),
        openInvoke(1),
        readOpen(1),
        openOk(1),
        wrote(2, 2),
        wrote(3, 3),
        readDeny(2, 3),
      ]),
    ).toEqual([]);
  });
});
