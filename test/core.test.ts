/**
 * The node agent's pure core, stepped with inputs and checked on the intents it asks for: no socket,
 * no clock, no sleep. Each case is a promise the agent makes to an application.
 */
import { describe, expect, it } from 'vitest';
import { AgentCore, type Intent } from '../core/agent.js';
import type { CoreHandle, Op, OpResult } from '../core/handle.js';
import { REQUEST_TIMEOUT_INTERVALS, type Message } from '../transport/messages.js';

type Outcome = { ok: true; value: OpResult } | { ok: false; code: string; reason?: string | undefined };

function handle(over: Partial<CoreHandle> = {}): CoreHandle {
  return {
    app: 'app',
    target: 'vm1.disk',
    requestId: 'r'.repeat(21),
    principal: 'p',
    mode: 'write',
    onFailure: 'pause',
    pauseTimeoutMs: 1000,
    instance: 'i'.repeat(21),
    how: 'open',
    takeover: false,
    state: 'opening',
    reason: undefined,
    version: 0,
    keptVersion: 0,
    size: 0,
    nextSeq: 1,
    ops: [],
    pending: 0,
    durable: true,
    owner: { changed: () => undefined, durability: () => undefined },
    ...over,
  };
}

/** A core with one session and a driver that records what it asks for. */
function world() {
  const core = new AgentCore('node-1');
  const intents: Intent[] = [];
  const outcomes = new Map<Op, Outcome>();
  const step = (input: Parameters<AgentCore['step']>[0]) => {
    const out = core.step(input);
    intents.push(...out);
    for (const i of out)
      if (i.kind === 'settle')
        outcomes.set(
          i.s.op,
          i.s.ok ? { ok: true, value: i.s.value } : { ok: false, code: i.s.code, reason: i.s.reason },
        );
    return out;
  };
  const sent = (type: string) =>
    intents
      .filter((i): i is Extract<Intent, { kind: 'send' }> => i.kind === 'send' && i.msg.type === type)
      .map((i) => i.msg);
  const lastSent = <T extends Message['type']>(type: T) => sent(type).at(-1) as Extract<Message, { type: T }>;
  const write = (h: CoreHandle, offset: number, text: string): Op => {
    const op: Op = {
      kind: 'write',
      seq: 0,
      offset,
      data: new TextEncoder().encode(text),
      length: 0,
      inflight: 0,
      sent: false,
      resends: 0,
      settle: { resolve: () => undefined, reject: () => undefined },
    };
    step({ type: 'io', h, op });
    return op;
  };
  /** Open `h` and grant it (lastSeq 0). */
  const active = (h: CoreHandle) => {
    step({ type: 'open', h });
    step({ type: 'frame', msg: { type: 'opened', id: lastSent('open').id, version: 0, lastSeq: 0 } });
    return h;
  };
  step({ type: 'ready', session: 's1' });
  return { core, intents, outcomes, step, sent, lastSent, write, active };
}

const changes = (intents: Intent[]) =>
  intents.filter((i) => i.kind === 'changed').map((i) => (i.kind === 'changed' ? `${i.from}->${i.to}` : ''));

describe('opening', () => {
  it('keeps the requestId and instance before it asks the store for them', () => {
    const w = world();
    const out = w.step({ type: 'open', h: handle() });
    expect(out.map((i) => i.kind)).toEqual(['keep', 'send']);
  });

  it('a reclaim after an agent restart resumes as the kept instance, not as a takeover', () => {
    const w = world();
    w.step({ type: 'open', h: handle({ how: 'resume' }) });
    const item = w.lastSent('resume').items[0]!;
    expect(item.instance).toBe('i'.repeat(21));
    expect(item.takeover).toBeUndefined();
  });
});

describe('L3: an operation the store refuses fails alone (finding 1)', () => {
  it('a write refused INVALID_ARGUMENT rejects, an empty write takes its seq, and the next write lands', () => {
    const w = world();
    const h = w.active(handle());
    const bad = w.write(h, 64 * 1024 * 1024, 'x');
    const good = w.write(h, 0, 'abc');
    const [first, second] = w.sent('write') as Array<Extract<Message, { type: 'write' }>>;
    expect([first!.seq, second!.seq]).toEqual([1, 2]);
    w.step({
      type: 'frame',
      msg: {
        type: 'error',
        id: first!.id,
        code: 'INVALID_ARGUMENT',
        message: 'write past the maximum target size',
        retryable: false,
      },
    });
    expect(w.outcomes.get(bad)).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT' });
    const filler = w.lastSent('write');
    expect(filler.seq).toBe(1);
    expect(filler.data.length).toBe(0);
    // The pipelined write arrived before the filler: the store answers SEQ_GAP, the agent sends it again after.
    w.step({
      type: 'frame',
      msg: { type: 'error', id: second!.id, code: 'SEQ_GAP', message: 'expected seq 1, got 2', retryable: true },
    });
    const again = w.lastSent('write');
    expect(again.seq).toBe(2);
    w.step({ type: 'frame', msg: { type: 'written', id: filler.id, seq: 1, version: 1 } });
    w.step({ type: 'frame', msg: { type: 'written', id: again.id, seq: 2, version: 2 } });
    expect(w.outcomes.get(good)).toEqual({ ok: true, value: { version: 2 } });
    expect(changes(w.intents)).toEqual(['opening->active']);
    expect(h.ops).toEqual([]);
  });

  it('a write that keeps arriving before its predecessor drops the session instead of looping', () => {
    const w = world();
    const h = w.active(handle());
    w.write(h, 0, 'a');
    for (let i = 0; i < 9; i++)
      w.step({
        type: 'frame',
        msg: { type: 'error', id: w.lastSent('write').id, code: 'SEQ_GAP', message: 'gap', retryable: true },
      });
    expect(w.intents.filter((i) => i.kind === 'drop-session')).toHaveLength(1);
  });
});

describe('S5: every outcome tells the truth (finding 7)', () => {
  /** A handle with writes seq 1..n sent and unanswered, then paused by a lost connection and resumed. */
  function pausedWithWrites(n: number) {
    const w = world();
    const h = w.active(handle());
    const ops = Array.from({ length: n }, (_, i) => w.write(h, i, String(i)));
    w.step({ type: 'disconnected' });
    const queued = w.write(h, 9, 'queued');
    w.step({ type: 'ready', session: 's2' });
    return { w, h, ops, queued, resume: w.lastSent('resume') };
  }

  it('a denied resume resolves the writes the store applied and rejects the rest as not applied', () => {
    const { w, ops, queued, resume } = pausedWithWrites(3);
    w.step({
      type: 'frame',
      msg: {
        type: 'resumed',
        id: resume.id,
        results: [
          {
            target: 'vm1.disk',
            requestId: 'r'.repeat(21),
            granted: false,
            reason: 'MODIFIED',
            code: 'MODIFIED',
            version: 7,
            lastSeq: 2,
          },
        ],
      },
    });
    expect(ops.map((op) => w.outcomes.get(op))).toEqual([
      { ok: true, value: { version: 7 } },
      { ok: true, value: { version: 7 } },
      { ok: false, code: 'MODIFIED', reason: undefined },
    ]);
    expect(w.outcomes.get(queued)).toMatchObject({ ok: false, code: 'MODIFIED' });
  });

  it('without the evidence, a sent write rejects OUTCOME_UNKNOWN with the reason; one never sent rejects with the reason', () => {
    const { w, ops, queued, resume } = pausedWithWrites(1);
    w.step({
      type: 'frame',
      msg: {
        type: 'resumed',
        id: resume.id,
        results: [
          {
            target: 'vm1.disk',
            requestId: 'r'.repeat(21),
            granted: false,
            reason: 'MODIFIED',
            code: 'MODIFIED',
            version: 7,
          },
        ],
      },
    });
    expect(w.outcomes.get(ops[0]!)).toEqual({ ok: false, code: 'OUTCOME_UNKNOWN', reason: 'MODIFIED' });
    expect(w.outcomes.get(queued)).toMatchObject({ ok: false, code: 'MODIFIED' });
  });

  it('a pause timeout never claims a sent write was not applied', () => {
    const w = world();
    const h = w.active(handle());
    const sent = w.write(h, 0, 'a');
    w.step({ type: 'disconnected' });
    const queued = w.write(h, 1, 'b');
    w.step({ type: 'pause-timeout', h });
    expect(w.outcomes.get(sent)).toEqual({ ok: false, code: 'OUTCOME_UNKNOWN', reason: 'TIMEOUT' });
    expect(w.outcomes.get(queued)).toMatchObject({ ok: false, code: 'TIMEOUT' });
    expect(h.state).toBe('invalidated');
    expect(w.intents.some((i) => i.kind === 'forget')).toBe(true);
  });

  it("a fail-fast handle's sent write fails OUTCOME_UNKNOWN, and an empty write keeps its seq for the replay", () => {
    const w = world();
    const h = w.active(handle({ onFailure: 'error' }));
    const sent = w.write(h, 0, 'a');
    w.step({ type: 'disconnected' });
    expect(w.outcomes.get(sent)).toEqual({ ok: false, code: 'OUTCOME_UNKNOWN', reason: 'UNAVAILABLE' });
    w.step({ type: 'ready', session: 's2' });
    w.step({
      type: 'frame',
      msg: {
        type: 'resumed',
        id: w.lastSent('resume').id,
        results: [{ target: 'vm1.disk', requestId: 'r'.repeat(21), granted: true, version: 0, lastSeq: 0 }],
      },
    });
    const replay = w.lastSent('write');
    expect([replay.seq, replay.data.length]).toEqual([1, 0]);
  });

  it('a granted resume acknowledges what was applied, fills a seq nobody holds, and replays the rest in order', () => {
    const w = world();
    const h = w.active(handle());
    const ops = [w.write(h, 0, 'a'), w.write(h, 1, 'b'), w.write(h, 2, 'c')];
    // seq 2 was refused on its own and its filler lost with the connection: only 1 and 3 are left.
    h.ops.splice(1, 1);
    w.step({ type: 'disconnected' });
    w.step({ type: 'ready', session: 's2' });
    const before = w.sent('write').length;
    w.step({
      type: 'frame',
      msg: {
        type: 'resumed',
        id: w.lastSent('resume').id,
        results: [{ target: 'vm1.disk', requestId: 'r'.repeat(21), granted: true, version: 1, lastSeq: 1 }],
      },
    });
    expect(w.outcomes.get(ops[0]!)).toEqual({ ok: true, value: { version: 1 } });
    const replay = (w.sent('write') as Array<Extract<Message, { type: 'write' }>>)
      .slice(before)
      .map((m) => [m.seq, m.data.length]);
    expect(replay).toEqual([
      [2, 0],
      [3, 1],
    ]);
  });
});

describe('handles that go away while their resume is in flight', () => {
  const granted = (id: number) => ({
    type: 'resumed' as const,
    id,
    results: [{ target: 'vm1.disk', requestId: 'r'.repeat(21), granted: true, version: 0, lastSeq: 0 }],
  });

  it('an application that died sends nothing when the batch is granted; the restarted one resumes alone (failure 6)', () => {
    const w = world();
    const h = w.active(handle());
    w.write(h, 0, 'old1');
    w.step({ type: 'disconnected' });
    w.write(h, 4, 'old2');
    w.step({ type: 'ready', session: 's2' });
    const batch = w.lastSent('resume');
    w.step({ type: 'app-gone', h });
    const again = handle({ how: 'resume' });
    w.step({ type: 'open', h: again });
    const reclaim = w.lastSent('resume');
    const before = w.sent('write').length;
    const out = w.step({ type: 'frame', msg: granted(batch.id) });
    expect(out.filter((i) => i.kind === 'send')).toEqual([]);
    w.step({ type: 'frame', msg: granted(reclaim.id) });
    expect(again.state).toBe('active');
    w.write(again, 0, 'new1');
    expect(
      w
        .sent('write')
        .slice(before)
        .map((m) => (m.type === 'write' ? m.seq : 0)),
    ).toEqual([1]);
  });

  it('a handle closed meanwhile lets go of the grant it no longer wants', () => {
    const w = world();
    const h = w.active(handle());
    w.step({ type: 'disconnected' });
    w.step({ type: 'ready', session: 's2' });
    const batch = w.lastSent('resume');
    w.step({ type: 'close', h });
    expect(h.state).toBe('closed');
    const out = w.step({ type: 'frame', msg: granted(batch.id) });
    expect(out.flatMap((i) => (i.kind === 'send' ? [i.msg.type] : []))).toEqual(['close']);
  });
});

describe('closing', () => {
  it('writes sent before a close are answered; the handle closes after them', () => {
    const w = world();
    const h = w.active(handle());
    const op = w.write(h, 0, 'a');
    w.step({ type: 'close', h });
    expect(w.intents.filter((i) => i.kind === 'send').map((i) => (i.kind === 'send' ? i.msg.type : ''))).toEqual([
      'open',
      'write',
      'close',
    ]);
    w.step({ type: 'frame', msg: { type: 'written', id: w.lastSent('write').id, seq: 1, version: 1 } });
    w.step({ type: 'frame', msg: { type: 'closed', id: w.lastSent('close').id } });
    expect(w.outcomes.get(op)).toEqual({ ok: true, value: { version: 1 } });
    expect(h.state).toBe('closed');
  });

  it('an application that dies leaves its requestId kept and says nothing to the storage (failure 6)', () => {
    const w = world();
    const h = w.active(handle());
    const out = w.step({ type: 'app-gone', h });
    expect(out.some((i) => i.kind === 'forget' || i.kind === 'send')).toBe(false);
    expect(w.core.handles.size).toBe(0);
  });
});

describe('the node-local file (finding 5)', () => {
  it('a failed keep marks the handle not durable; a later good one marks it durable again', () => {
    const w = world();
    const h = w.active(handle());
    expect(w.step({ type: 'kept', hs: [h], error: 'ENOSPC' }).map((i) => i.kind)).toEqual(['durability']);
    expect(h.durable).toBe(false);
    expect(w.step({ type: 'kept', hs: [h], error: 'ENOSPC' })).toEqual([]);
    // Until the file takes it, every heartbeat tick asks to keep it again.
    expect(w.step({ type: 'tick' }).map((i) => i.kind)).toEqual(['keep']);
    w.step({ type: 'kept', hs: [h], error: undefined });
    expect(w.step({ type: 'tick' })).toEqual([]);
    expect(h.durable).toBe(true);
  });
});

describe('a reader keeps the newest version it saw (L1 after a restart)', () => {
  const R = 'r'.repeat(21);
  const read = (w: ReturnType<typeof world>, h: CoreHandle): Op => {
    const op: Op = {
      kind: 'read',
      seq: 0,
      offset: 0,
      length: 4,
      data: undefined,
      inflight: 0,
      sent: false,
      resends: 0,
      settle: { resolve: () => undefined, reject: () => undefined },
    };
    w.step({ type: 'io', h, op });
    return op;
  };
  const answer = (w: ReturnType<typeof world>, version: number) =>
    w.step({ type: 'frame', msg: { type: 'data', id: w.lastSent('read').id, version, data: new Uint8Array(4) } });

  it('a read answer at a newer version is settled at once and kept later, once per burst, and never for an unchanged version', () => {
    const w = world();
    const h = w.active(handle({ mode: 'read' }));
    const first = read(w, h);
    // The answer is settled in the same step, with no keep to wait for; the keep comes later.
    expect(answer(w, 3).map((i) => i.kind)).toEqual(['settle', 'keep-later']);
    expect(w.outcomes.get(first)).toMatchObject({ ok: true, value: { version: 3 } });
    // More reads before the file answered: newer versions ride on the pending keep, which writes the newest.
    read(w, h);
    expect(answer(w, 4).map((i) => i.kind)).toEqual(['settle']);
    expect(h.keptVersion).toBe(4);
    w.step({ type: 'kept', hs: [h], error: undefined });
    // Nothing changed: nothing to keep.
    read(w, h);
    expect(answer(w, 4).map((i) => i.kind)).toEqual(['settle']);
    read(w, h);
    expect(answer(w, 5).map((i) => i.kind)).toEqual(['settle', 'keep-later']);
  });

  it('a resume granted at a version the file does not hold for sure is kept before the handle is active again', () => {
    const w = world();
    const h = w.active(handle({ mode: 'read' }));
    read(w, h);
    answer(w, 3); // its keep-later is still pending
    w.step({ type: 'disconnected' });
    w.step({ type: 'ready', session: 's2' });
    const resume = w.lastSent('resume');
    expect(resume.items[0]!.version).toBe(3);
    const out = w.step({
      type: 'frame',
      msg: {
        type: 'resumed',
        id: resume.id,
        results: [{ target: 'vm1.disk', requestId: R, granted: true, version: 3, lastSeq: 0 }],
      },
    });
    expect(out.map((i) => i.kind).slice(0, 2)).toEqual(['keep', 'changed']);
    // Once kept, a later grant at the same version asks for nothing.
    w.step({ type: 'disconnected' });
    w.step({ type: 'ready', session: 's3' });
    const again = w.step({
      type: 'frame',
      msg: {
        type: 'resumed',
        id: w.lastSent('resume').id,
        results: [{ target: 'vm1.disk', requestId: R, granted: true, version: 3, lastSeq: 0 }],
      },
    });
    expect(again.some((i) => i.kind === 'keep' || i.kind === 'keep-later')).toBe(false);
  });

  it("a writer's reads keep nothing", () => {
    const w = world();
    const h = w.active(handle());
    read(w, h);
    expect(answer(w, 3).map((i) => i.kind)).toEqual(['settle']);
  });
});

describe('liveness', () => {
  it(`a request unanswered for ${REQUEST_TIMEOUT_INTERVALS} heartbeat intervals drops the session`, () => {
    const w = world();
    const h = w.active(handle());
    w.write(h, 0, 'a');
    for (let i = 1; i < REQUEST_TIMEOUT_INTERVALS; i++) expect(w.step({ type: 'tick' })).toEqual([]);
    expect(w.step({ type: 'tick' }).map((i) => i.kind)).toEqual(['drop-session']);
  });
});
