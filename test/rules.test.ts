/**
 * The rules as pure decisions over what an adapter read (store/rules.ts), and the one way to open a
 * store from a spec (store/open.ts). The adapters' behaviour is in test/store.contract.test.ts.
 */
import { describe, expect, it } from 'vitest';
import {
  accessOf,
  decideAccess,
  decideClose,
  decideOpen,
  decideRenew,
  decideResume,
  decideWrite,
  mayOpen,
  NO_ACCESS,
  type TargetView,
} from '../store/rules.js';
import { parseStoreSpec, openStore } from '../store/open.js';
import { LEGACY_OWNER, MAX_GRANTS, type LockRecord, type TargetAccess, type Tombstone } from '../store/types.js';
import { bytes, tempDir } from './helpers.js';

const X = 'X'.repeat(21);
const Y = 'Y'.repeat(21);
const rec = (over: Partial<LockRecord> = {}): LockRecord => ({
  target: 't',
  requestId: X,
  principal: 'p',
  session: 's1',
  expiresAt: 1000,
  lastSeq: 3,
  instance: 'i1',
  instanceSeq: 0,
  prevInstance: '',
  ...over,
});

/** Owned by p, which granted q write: both open it (the tests of ownership pass their own). */
const shared: TargetAccess = { owner: 'p', grants: [{ principal: 'q', mode: 'write' }] };

/** A view that counts how often the tombstones were read; `access` null: none recorded. */
function view(
  record: LockRecord | undefined,
  version = 7,
  tombs: Tombstone[] = [],
  access: TargetAccess | null = shared,
) {
  const v = {
    record,
    version,
    fixedSize: 0,
    reads: 0,
    tombstones: () => (v.reads++, tombs),
    access: access ?? undefined,
  };
  return v satisfies TargetView;
}

describe('rules as decisions', () => {
  it("past the bound of tombstones, the principal deciding gives up its own first: another's binding stays", () => {
    const victim: Tombstone = {
      requestId: X,
      principal: 'p',
      instance: 'i1',
      instanceSeq: 0,
      prevInstance: '',
      session: 's1',
      lastSeq: 5,
    };
    let tombs: Tombstone[] = [victim];
    // Principal q opens and closes the target nine times with requestIds of its own.
    for (let k = 0; k < 9; k++) {
      const id = `${k}`.repeat(21);
      const closed = decideClose(
        view(rec({ requestId: id, principal: 'q', session: 'sq', instance: 'iq' }), 9, tombs),
        { target: 't', requestId: id },
        'sq',
      );
      tombs = (closed.effects[0] as { tombstones: Tombstone[] }).tombstones;
    }
    expect(tombs).toHaveLength(8);
    expect(tombs).toContainEqual(victim);
    // So q still cannot open the victim's requestId, and the victim's resume gets its lastSeq.
    expect(
      decideOpen(
        view(undefined, 9, tombs),
        { target: 't', requestId: X, principal: 'q', mode: 'write', session: 'sq', leaseMs: 10, instance: 'iq' },
        0,
      ).out,
    ).toMatchObject({ ok: false, code: 'FORBIDDEN' });
    expect(
      decideResume(
        view(undefined, 9, tombs),
        { target: 't', requestId: X, principal: 'p', mode: 'write', session: 's2', leaseMs: 10, instance: 'i1' },
        0,
      ).out,
    ).toMatchObject({ granted: false, reason: 'MODIFIED', lastSeq: 5 });
  });

  it("a LOCKED answer names the holder to the holder's own principal only", () => {
    const held = view(rec({ requestId: Y, principal: 'p', expiresAt: 1000 }));
    const ask = (principal: string) =>
      decideOpen(held, { target: 't', requestId: X, principal, mode: 'write', session: 's9', leaseMs: 10 }, 0).out;
    expect(ask('p')).toMatchObject({ ok: false, code: 'LOCKED', message: expect.stringContaining(`requestId ${Y}`) });
    const other = ask('q');
    expect(other).toMatchObject({ ok: false, code: 'LOCKED' });
    expect(JSON.stringify(other)).not.toContain(Y);
    expect(JSON.stringify(other)).not.toContain('s1');
    expect(other).toEqual({ ok: false, code: 'LOCKED', message: 't is locked by another writer; retry later' });
  });

  it('a late open after its requestId let the target go, or a late takeover by the instance it was taken from, takes nothing', () => {
    const mine: Tombstone = {
      requestId: X,
      principal: 'p',
      instance: 'i1',
      instanceSeq: 0,
      prevInstance: '',
      session: 's2',
      lastSeq: 3,
    };
    // Closed (its tombstone kept); another writer's lock lapsed since: the late open buries nobody.
    const late = decideOpen(
      view(rec({ requestId: Y, principal: 'q', expiresAt: 10 }), 9, [mine]),
      {
        target: 't',
        requestId: X,
        principal: 'p',
        mode: 'write',
        session: 's1',
        leaseMs: 10,
        instance: 'i1',
        epoch: 1,
      },
      100,
    );
    expect(late).toMatchObject({ out: { ok: false, code: 'SUPERSEDED' }, effects: [] });
    // i2 took the record over from i1, then i3 from i2: i2's late takeover is refused, i4's new one is not.
    const chain = view(rec({ instance: 'i3', prevInstance: 'i2', session: 's3', epoch: 5 }));
    const takeover = (instance: string) =>
      decideResume(
        chain,
        {
          target: 't',
          requestId: X,
          principal: 'p',
          mode: 'write',
          session: 's9',
          leaseMs: 10,
          instance,
          takeover: true,
          epoch: 1,
        },
        0,
      ).out;
    expect(takeover('i2')).toMatchObject({ granted: false, stale: true });
    expect(takeover('i4')).toMatchObject({ granted: true });
    // Along a chain of moves, the record remembers every instance it was taken from: i1 -> i2 -> i3 -> i4.
    let r = rec({ instance: 'i1', session: 's1', epoch: 1 });
    for (const [i, session] of [
      ['i2', 's2'],
      ['i3', 's3'],
      ['i4', 's4'],
    ] as const) {
      const d = decideResume(
        view(r),
        {
          target: 't',
          requestId: X,
          principal: 'p',
          mode: 'write',
          session,
          leaseMs: 10,
          instance: i,
          takeover: true,
          epoch: 1,
        },
        0,
      );
      expect(d.out).toMatchObject({ granted: true });
      r = (d.effects[0] as { record: LockRecord }).record;
    }
    expect(r).toMatchObject({ instance: 'i4', prevInstance: 'i3', retired: ['i3', 'i2', 'i1'] });
    for (const late of ['i1', 'i2', 'i3']) {
      expect(
        decideResume(
          view(r),
          {
            target: 't',
            requestId: X,
            principal: 'p',
            mode: 'write',
            session: 's9',
            leaseMs: 10,
            instance: late,
            takeover: true,
            epoch: 9,
          },
          0,
        ),
      ).toMatchObject({ out: { granted: false, stale: true }, effects: [] });
    }
  });

  it("a requestId's hand-over between sessions only moves forward: a late open or resume from a session its node left takes nothing", () => {
    const held = rec({ session: 's2', epoch: 10 });
    const open = (session: string, epoch: number | undefined, instance = 'i1') =>
      decideOpen(
        view(held),
        { target: 't', requestId: X, principal: 'p', mode: 'write', session, leaseMs: 100, instance, epoch },
        0,
      );
    const resume = (session: string, epoch: number | undefined, takeover = false, instance = 'i1') =>
      decideResume(
        view(held),
        {
          target: 't',
          requestId: X,
          principal: 'p',
          mode: 'write',
          session,
          leaseMs: 100,
          instance,
          epoch,
          ...(takeover ? { takeover } : {}),
        },
        0,
      );
    // Older, or as old from another session: refused, nothing written.
    for (const [session, epoch] of [
      ['s1', 9],
      ['s1', 10],
      ['s2', 9],
    ] as const) {
      expect(open(session, epoch)).toMatchObject({ out: { ok: false, code: 'SUPERSEDED' }, effects: [] });
      expect(resume(session, epoch)).toEqual({
        out: { granted: false, reason: 'SUPERSEDED', code: 'SUPERSEDED', version: 7, stale: true, heldEpoch: 10 },
        effects: [],
      });
      expect(resume(session, epoch, true)).toMatchObject({
        out: { granted: false, stale: true, heldEpoch: 10 },
        effects: [],
      });
    }
    // The same request again on the session holding it, or a newer one anywhere: granted, the record at its counter.
    expect(resume('s2', 10)).toMatchObject({
      out: { granted: true },
      effects: [{ kind: 'put', record: { session: 's2', epoch: 10 } }],
    });
    expect(open('s3', 11)).toMatchObject({
      out: { ok: true, takeover: true },
      effects: [{ kind: 'put', record: { session: 's3', epoch: 11 } }],
    });
    expect(resume('s3', 11)).toMatchObject({
      out: { granted: true },
      effects: [{ kind: 'put', record: { session: 's3', epoch: 11 } }],
    });
    // An open of an older instance (a later one took the requestId over) is as late; a takeover by another instance is not ordered.
    expect(open('s3', 99, 'i0')).toMatchObject({ out: { ok: false, code: 'SUPERSEDED' }, effects: [] });
    expect(resume('s3', 1, true, 'i9')).toMatchObject({
      out: { granted: true },
      effects: [{ kind: 'put', record: { session: 's3', instance: 'i9', prevInstance: 'i1', epoch: 1 } }],
    });
    // Without a counter (an older node), nothing is checked and the record keeps its own.
    expect(resume('s1', undefined)).toMatchObject({
      out: { granted: true },
      effects: [{ kind: 'put', record: { session: 's1', epoch: 10 } }],
    });
  });

  it('a write open of an expired lock buries the old record and takes the target; a live one is LOCKED with nothing to write', () => {
    const old = rec({ expiresAt: 100 });
    const d = decideOpen(
      view(old),
      { target: 't', requestId: Y, principal: 'p', mode: 'write', session: 's2', leaseMs: 50, instance: 'i2' },
      200,
    );
    expect(d.out).toEqual({ ok: true, version: 7, lastSeq: 0, takeover: false, size: 0 });
    expect(d.effects).toEqual([
      {
        kind: 'tombstones',
        tombstones: [
          {
            requestId: X,
            principal: 'p',
            instance: 'i1',
            instanceSeq: 0,
            prevInstance: '',
            session: 's1',
            lastSeq: 3,
            takenBy: { requestId: Y, principal: 'p', at: 200 },
          },
        ],
      },
      {
        kind: 'put',
        record: {
          target: 't',
          requestId: Y,
          principal: 'p',
          session: 's2',
          expiresAt: 250,
          lastSeq: 0,
          instance: 'i2',
          instanceSeq: 0,
          prevInstance: '',
          epoch: 0,
        },
      },
    ]);
    const locked = decideOpen(
      view(rec()),
      { target: 't', requestId: Y, principal: 'p', mode: 'write', session: 's2', leaseMs: 50 },
      200,
    );
    expect(locked).toEqual({
      out: {
        ok: false,
        code: 'LOCKED',
        message: `t is held by requestId ${X} (principal p) through session s1, which renews the lock while it lives; if that session stops renewing it, it lapses in 800 ms at most`,
      },
      effects: [],
    });
  });

  it('a write in order asks for its bytes and its seq, and answers the version after them; the hot path reads no tombstones', () => {
    const v = view(rec());
    const d = decideWrite(v, { target: 't', requestId: X, session: 's1', seq: 4, offset: 2, data: bytes('ab') });
    expect(d.out).toEqual({ ok: true, applied: true, version: 8 });
    expect(d.effects).toEqual([
      { kind: 'data', offset: 2, data: bytes('ab') },
      { kind: 'put', record: rec({ lastSeq: 4 }) },
    ]);
    expect(v.reads).toBe(0);
    // A replay is acknowledged with nothing to write; a gap and a fenced session are refused.
    expect(
      decideWrite(view(rec()), { target: 't', requestId: X, session: 's1', seq: 3, offset: 0, data: bytes('x') }),
    ).toEqual({ out: { ok: true, applied: false, version: 7 }, effects: [] });
    expect(
      decideWrite(view(rec()), { target: 't', requestId: X, session: 's1', seq: 6, offset: 0, data: bytes('x') }).out,
    ).toMatchObject({ ok: false, code: 'SEQ_GAP' });
    expect(
      decideWrite(view(rec()), { target: 't', requestId: X, session: 's9', seq: 4, offset: 0, data: bytes('x') }).out,
    ).toMatchObject({ ok: false, code: 'SUPERSEDED' });
  });

  it('a resume of a requestId whose record is gone is denied from its tombstone, writing nothing', () => {
    const tomb: Tombstone = {
      requestId: X,
      instance: 'i1',
      instanceSeq: 0,
      prevInstance: '',
      session: 's1',
      lastSeq: 5,
    };
    const d = decideResume(
      view(rec({ requestId: Y }), 9, [tomb]),
      { target: 't', requestId: X, principal: 'p', mode: 'write', session: 's2', leaseMs: 10, instance: 'i1' },
      0,
    );
    expect(d).toEqual({
      out: { granted: false, reason: 'MODIFIED', code: 'MODIFIED', version: 9, lastSeq: 5 },
      effects: [],
    });
  });

  it("a requestId stays its principal's while a tombstone names it: another principal's write open of it is FORBIDDEN, writing nothing", () => {
    const tomb: Tombstone = {
      requestId: X,
      principal: 'p',
      instance: 'i1',
      instanceSeq: 0,
      prevInstance: '',
      session: 's1',
      lastSeq: 5,
    };
    const req = {
      target: 't',
      requestId: X,
      principal: 'q',
      mode: 'write' as const,
      session: 's3',
      leaseMs: 50,
      instance: 'i3',
    };
    // The target free, or held by a lapsed lock of a third requestId: refused before the lapsed record is buried.
    expect(decideOpen(view(undefined, 9, [tomb]), req, 2000)).toEqual({
      out: { ok: false, code: 'FORBIDDEN', message: 'requestId belongs to another principal' },
      effects: [],
    });
    expect(decideOpen(view(rec({ requestId: Y, principal: 'q', expiresAt: 100 }), 9, [tomb]), req, 2000)).toEqual({
      out: expect.objectContaining({ ok: false, code: 'FORBIDDEN' }),
      effects: [],
    });
    // A tombstone written before tombstones kept their principal binds the requestId to nobody who can open it afresh.
    const { principal: _, ...legacy } = tomb;
    expect(decideOpen(view(undefined, 9, [legacy]), { ...req, principal: 'p' }, 2000).out).toMatchObject({
      ok: false,
      code: 'FORBIDDEN',
    });
    // Its own principal's open of it again is a late copy (a node opens a requestId afresh only once);
    // burying its record (a close) replaces only its own tombstone.
    const own = decideOpen(
      view(rec({ requestId: Y, principal: 'q', expiresAt: 100 }), 9, [tomb]),
      { ...req, principal: 'p' },
      2000,
    );
    expect(own).toMatchObject({ out: { ok: false, code: 'SUPERSEDED' }, effects: [] });
    const again = decideClose(
      view(rec({ principal: 'p', session: 's3', instance: 'i3', lastSeq: 0 }), 9, [tomb]),
      { target: 't', requestId: X },
      's3',
    );
    expect(again.effects[0]).toEqual({
      kind: 'tombstones',
      tombstones: [
        { requestId: X, principal: 'p', instance: 'i3', instanceSeq: 0, prevInstance: '', session: 's3', lastSeq: 0 },
      ],
    });
  });

  it("another principal's tombstone is no evidence for a requestId, nor against it; one of a record of another principal is never replaced", () => {
    const theirs: Tombstone = {
      requestId: X,
      principal: 'q',
      instance: 'i9',
      instanceSeq: 0,
      prevInstance: 'i1',
      session: 's9',
      lastSeq: 7,
    };
    const resume = {
      target: 't',
      requestId: X,
      principal: 'p',
      mode: 'write' as const,
      session: 's2',
      leaseMs: 10,
      instance: 'i1',
    };
    // Not SUPERSEDED with its lastSeq (its prevInstance is the asker's instance), not MODIFIED with its lastSeq: no evidence.
    expect(decideResume(view(rec({ requestId: Y }), 9, [theirs]), resume, 0).out).toEqual({
      granted: false,
      reason: 'MODIFIED',
      code: 'MODIFIED',
      version: 9,
    });
    expect(decideResume(view(undefined, 9, [{ ...theirs, instance: 'i1' }]), resume, 0).out).toEqual({
      granted: false,
      reason: 'MODIFIED',
      code: 'MODIFIED',
      version: 9,
    });
    // The asker's own tombstone, behind the other principal's, is the evidence.
    const mine: Tombstone = {
      requestId: X,
      principal: 'p',
      instance: 'i1',
      instanceSeq: 0,
      prevInstance: '',
      session: 's1',
      lastSeq: 4,
    };
    expect(decideResume(view(undefined, 9, [theirs, mine]), resume, 0).out).toEqual({
      granted: false,
      reason: 'MODIFIED',
      code: 'MODIFIED',
      version: 9,
      lastSeq: 4,
    });
    // A tombstone from before principals were kept is taken as the asker's, as it was.
    const { principal: _, ...legacy } = mine;
    expect(decideResume(view(undefined, 9, [legacy]), resume, 0).out).toMatchObject({ code: 'MODIFIED', lastSeq: 4 });
    // Burying a record of q's never replaces p's tombstone of the same requestId.
    const buried = decideClose(
      view(rec({ principal: 'q', session: 's9' }), 9, [mine]),
      { target: 't', requestId: X },
      's9',
    );
    expect(buried.effects[0]).toEqual({
      kind: 'tombstones',
      tombstones: [expect.objectContaining({ principal: 'q', session: 's9' }), mine],
    });
  });

  it('close buries and deletes; renew extends only a lock the session holds', () => {
    expect(decideClose(view(rec()), { target: 't', requestId: X }, 's1').effects.map((e) => e.kind)).toEqual([
      'tombstones',
      'delete',
    ]);
    expect(decideClose(view(rec()), { target: 't', requestId: X }, 's2')).toEqual({ out: false, effects: [] });
    expect(decideRenew(view(rec()), { target: 't', requestId: X }, 's1', 5000)).toEqual({
      out: undefined,
      effects: [{ kind: 'put', record: rec({ expiresAt: 5000 }) }],
    });
    expect(decideRenew(view(rec()), { target: 't', requestId: X }, 's2', 5000).out).toMatchObject({
      reason: 'SUPERSEDED',
    });
  });
});

describe('owners and access lists', () => {
  const open = (principal: string, mode: 'read' | 'write', extra: { size?: number } = {}) => ({
    target: 't',
    requestId: Y,
    principal,
    mode,
    session: 's2',
    leaseMs: 50,
    instance: 'i2',
    ...extra,
  });
  const mine: TargetAccess = { owner: 'p', grants: [{ principal: 'r', mode: 'read' }] };

  it("an open of a name nobody has creates the target for its principal; another's is refused before anything else is said of the target", () => {
    const created = decideOpen(view(undefined, 0, [], null), open('q', 'read'), 0);
    expect(created).toEqual({
      out: { ok: true, version: 0, lastSeq: 0, takeover: false, size: 0 },
      effects: [{ kind: 'access', access: { owner: 'q', grants: [] } }],
    });
    expect(decideOpen(view(undefined, 0, [], null), open('q', 'write'), 0).effects).toContainEqual({
      kind: 'access',
      access: { owner: 'q', grants: [] },
    });
    // q is neither the owner nor granted: refused, whatever it asks and whatever the target holds (its size, a live lock).
    const sized = { ...view(rec({ expiresAt: 10 }), 3, [], mine), fixedSize: 4096 };
    for (const v of [view(rec(), 3, [], mine), sized, view(undefined, 0, [], mine)]) {
      for (const req of [open('q', 'read'), open('q', 'write'), open('q', 'write', { size: 8192 })]) {
        expect(decideOpen(v, req, 100)).toEqual({
          out: { ok: false, code: 'FORBIDDEN', message: NO_ACCESS },
          effects: [],
        });
      }
    }
    // r may read, not write; the owner may do both.
    expect(decideOpen(sized, open('r', 'read'), 100).out).toMatchObject({ ok: true, size: 4096 });
    expect(decideOpen(sized, open('r', 'write'), 100).out).toEqual({
      ok: false,
      code: 'FORBIDDEN',
      message: NO_ACCESS,
    });
    expect(decideOpen(sized, open('p', 'write'), 100).out).toMatchObject({ ok: true });
    expect(
      mayOpen(mine, 'r', 'read') &&
        !mayOpen(mine, 'r', 'write') &&
        mayOpen(mine, 'p', 'write') &&
        !mayOpen(mine, 'q', 'read'),
    ).toBe(true);
  });

  it('a principal without access resumes nothing and learns nothing of the target, not even its version', () => {
    const held = view(rec({ principal: 'r' }), 9, [], mine);
    expect(
      decideResume(
        held,
        { target: 't', requestId: X, principal: 'r', mode: 'write', session: 's2', leaseMs: 10, instance: 'i1' },
        0,
      ),
    ).toEqual({ out: { granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN', version: 0 }, effects: [] });
    expect(
      decideResume(
        held,
        { target: 't', requestId: Y, principal: 'q', mode: 'read', session: 's2', leaseMs: 10, version: 9 },
        0,
      ).out,
    ).toEqual({ granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN', version: 0 });
    expect(
      decideResume(
        held,
        { target: 't', requestId: Y, principal: 'r', mode: 'read', session: 's2', leaseMs: 10, version: 9 },
        0,
      ).out,
    ).toMatchObject({ granted: true });
  });

  it("a target of an earlier version (no owner kept) is its lock record's principal's, else its last holder's, else default's, recorded with the first change", () => {
    const tomb: Tombstone = {
      requestId: X,
      principal: 'q',
      instance: 'i1',
      instanceSeq: 0,
      prevInstance: '',
      session: 's1',
      lastSeq: 5,
    };
    const { principal: _, ...nameless } = tomb;
    expect(accessOf(view(rec({ principal: 'r' }), 3, [tomb], null))).toEqual({ owner: 'r', grants: [] });
    expect(accessOf(view(undefined, 3, [nameless, tomb], null))).toEqual({ owner: 'q', grants: [] });
    expect(accessOf(view(undefined, 3, [nameless], null))).toEqual({ owner: LEGACY_OWNER, grants: [] });
    expect(accessOf({ ...view(undefined, 0, [], null), fixedSize: 4096 })).toEqual({ owner: LEGACY_OWNER, grants: [] });
    expect(accessOf(view(undefined, 0, [], null))).toBeUndefined();
    // The first comer of another principal is refused, even once the lock lapsed; the owner's first change records it.
    const old = view(rec({ principal: 'r', expiresAt: 10, session: 's2' }), 3, [], null);
    expect(decideOpen(old, open('q', 'write'), 100).out).toEqual({ ok: false, code: 'FORBIDDEN', message: NO_ACCESS });
    expect(
      decideWrite(old, { target: 't', requestId: X, session: 's2', seq: 4, offset: 0, data: bytes('a') }).effects,
    ).toContainEqual({ kind: 'access', access: { owner: 'r', grants: [] } });
    expect(decideClose(old, { target: 't', requestId: X }, 's2').effects).toContainEqual({
      kind: 'access',
      access: { owner: 'r', grants: [] },
    });
    // A decision that changes nothing records nothing.
    expect(decideOpen(old, open('q', 'write'), 100).effects).toEqual([]);
  });

  it('only the owner, or the operator, grants and revokes; the list is bounded', () => {
    const v = view(rec(), 3, [], mine);
    const edit = (by: string | undefined, principal: string, mode: 'read' | 'write' | 'none', on = v) =>
      decideAccess(on, { target: 't', by, principal, mode });
    expect(edit('p', 'q', 'write')).toEqual({
      out: {
        ok: true,
        access: {
          owner: 'p',
          grants: [
            { principal: 'r', mode: 'read' },
            { principal: 'q', mode: 'write' },
          ],
        },
      },
      effects: [
        {
          kind: 'access',
          access: {
            owner: 'p',
            grants: [
              { principal: 'r', mode: 'read' },
              { principal: 'q', mode: 'write' },
            ],
          },
        },
      ],
    });
    expect(edit('p', 'r', 'write').out).toEqual({
      ok: true,
      access: { owner: 'p', grants: [{ principal: 'r', mode: 'write' }] },
    });
    expect(edit(undefined, 'r', 'none')).toEqual({
      out: { ok: true, access: { owner: 'p', grants: [] } },
      effects: [{ kind: 'access', access: { owner: 'p', grants: [] } }],
    });
    // Nothing to change: nothing written.
    expect(edit('p', 'r', 'read')).toEqual({ out: { ok: true, access: mine }, effects: [] });
    expect(edit('p', 'z', 'none')).toEqual({ out: { ok: true, access: mine }, effects: [] });
    // A grantee, a stranger, and anyone on a name nobody has: one answer, nothing written.
    for (const [by, on] of [
      ['r', v],
      ['q', v],
      ['q', view(undefined, 0, [], null)],
    ] as const) {
      expect(edit(by, 'q', 'write', on)).toEqual({
        out: { ok: false, code: 'FORBIDDEN', message: NO_ACCESS },
        effects: [],
      });
    }
    expect(edit(undefined, 'q', 'read', view(undefined, 0, [], null)).out).toMatchObject({
      ok: false,
      code: 'INVALID_ARGUMENT',
      message: 't does not exist: nobody has opened it',
    });
    expect(edit('p', 'p', 'none').out).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT' });
    const full = view(rec(), 3, [], {
      owner: 'p',
      grants: Array.from({ length: MAX_GRANTS }, (_, i) => ({ principal: `g${i}`, mode: 'read' as const })),
    });
    expect(edit('p', 'one-more', 'read', full).out).toMatchObject({
      ok: false,
      code: 'INVALID_ARGUMENT',
      message: expect.stringContaining(`${MAX_GRANTS} principals`),
    });
    expect(edit('p', 'g3', 'write', full).out).toMatchObject({ ok: true });
  });
});

describe('store specs', () => {
  it('parses memory, sqlite:PATH and etcd://HOST:PORT,... and refuses anything else with the forms it takes', () => {
    expect(parseStoreSpec('memory')).toEqual({ kind: 'memory' });
    expect(parseStoreSpec('sqlite:/tmp/x.sqlite')).toEqual({ kind: 'sqlite', path: '/tmp/x.sqlite' });
    expect(parseStoreSpec('etcd://127.0.0.1:2379,127.0.0.1:22379')).toEqual({
      kind: 'etcd',
      endpoints: ['127.0.0.1:2379', '127.0.0.1:22379'],
    });
    expect(() => parseStoreSpec('postgres://x')).toThrow(/expected memory, sqlite:PATH or etcd:\/\/HOST:PORT/);
    expect(() => parseStoreSpec('sqlite:')).toThrow(/needs a path/);
    expect(() => parseStoreSpec('etcd://nohost')).toThrow(/HOST:PORT/);
  });

  it('opens a working store from a spec', async () => {
    const t = tempDir();
    try {
      for (const spec of ['memory', `sqlite:${t.dir}/s.sqlite`]) {
        const s = openStore(spec);
        expect(
          await s.open({ target: 't', requestId: X, principal: 'p', mode: 'write', session: 's', leaseMs: 1000 }),
        ).toMatchObject({ ok: true });
        expect(
          await s.write({ target: 't', requestId: X, session: 's', seq: 1, offset: 0, data: bytes('hi') }),
        ).toMatchObject({ ok: true, applied: true, version: 1 });
        await s.shutdown();
      }
    } finally {
      t.cleanup();
    }
  });
  it('a size is fixed only by a granted write open of a target never written, and bounds its writes', () => {
    const req = {
      target: 't',
      requestId: Y,
      principal: 'p',
      mode: 'write' as const,
      session: 's2',
      leaseMs: 50,
      size: 8192,
    };
    const fresh = decideOpen(view(undefined, 0), req, 200);
    expect(fresh.out).toMatchObject({ ok: true, size: 8192 });
    expect(fresh.effects).toContainEqual({ kind: 'size', size: 8192 });
    // Refused while another writer holds it: nothing is written, the size included.
    expect(decideOpen(view(rec(), 0), req, 200)).toEqual({
      out: expect.objectContaining({ ok: false, code: 'LOCKED' }),
      effects: [],
    });
    expect(decideOpen(view(undefined, 0), { ...req, size: 2 ** 41 }, 200).out).toMatchObject({
      ok: false,
      code: 'INVALID_ARGUMENT',
    });
    expect(decideOpen(view(undefined, 0), { ...req, size: 4096 }, 200, 1024).out).toMatchObject({
      ok: false,
      code: 'INVALID_ARGUMENT',
      message: expect.stringContaining('between 1 and 1024'),
    });
    const sized = { ...view(rec({ requestId: Y, session: 's2' }), 3), fixedSize: 8192 };
    expect(decideOpen(sized, { ...req, size: 8192 }, 200).effects).not.toContainEqual(
      expect.objectContaining({ kind: 'size' }),
    );
    const w = (offset: number, n: number) =>
      decideWrite(sized, { target: 't', requestId: Y, session: 's2', seq: 4, offset, data: new Uint8Array(n) });
    expect(w(8191, 1).out).toMatchObject({ ok: true, applied: true });
    expect(w(8191, 2)).toEqual({ out: expect.objectContaining({ ok: false, code: 'INVALID_ARGUMENT' }), effects: [] });
    // Past the 64 MiB of a target without a size, inside a disk's size: applied.
    expect(
      decideWrite(
        { ...sized, fixedSize: 2 ** 40 },
        { target: 't', requestId: Y, session: 's2', seq: 4, offset: 2 ** 39, data: new Uint8Array(1) },
      ).out,
    ).toMatchObject({ ok: true });
  });
});
