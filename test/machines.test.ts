/** The machines alone, on a simulated clock: no sockets, no store. */
import { describe, expect, it } from 'vitest';
import { createActor, fromPromise } from 'xstate';
import { simulatedClock } from '../actors/env.js';
import { appHandleMachine } from '../machines/app-handle.js';
import { nodeSessionMachine } from '../machines/node-session.js';
import { replicaHandleMachine } from '../machines/replica-handle.js';

const input = {
  target: 't',
  mode: 'write' as const,
  requestId: 'r'.repeat(21),
  onFailure: 'pause' as const,
  pauseTimeoutMs: 1000,
};

describe('application handle machine', () => {
  it('walks active -> paused -> resuming -> active and queues I/O while away', () => {
    const clock = simulatedClock();
    const dispatched: string[] = [];
    const m = appHandleMachine.provide({ actions: { dispatchIo: () => dispatched.push('io') } });
    const a = createActor(m, { clock, input }).start();
    a.send({ type: 'OPENED' });
    a.send({ type: 'PAUSED' });
    a.send({ type: 'IO' });
    a.send({ type: 'IO' });
    expect(a.getSnapshot().context.queued).toBe(2);
    a.send({ type: 'RESUMING' });
    a.send({ type: 'GRANTED' });
    expect(a.getSnapshot().value).toBe('active');
    expect(a.getSnapshot().context.queued).toBe(0);
  });

  it('invalidates with TIMEOUT when paused longer than the pause timeout', () => {
    const clock = simulatedClock();
    const a = createActor(appHandleMachine, { clock, input }).start();
    a.send({ type: 'OPENED' });
    a.send({ type: 'PAUSED' });
    clock.increment(999);
    expect(a.getSnapshot().value).toBe('paused');
    clock.increment(1);
    expect(a.getSnapshot().value).toBe('invalidated');
    expect(a.getSnapshot().context.reason).toBe('TIMEOUT');
  });

  it('times out after the pause timeout counted from the pause, not from the last resume attempt', () => {
    const clock = simulatedClock();
    const a = createActor(appHandleMachine, { clock, input }).start();
    a.send({ type: 'OPENED' });
    a.send({ type: 'PAUSED' });
    // The session keeps coming back and failing again before the resume is answered.
    for (let i = 0; i < 4; i++) {
      clock.increment(200);
      a.send({ type: 'RESUMING' });
      clock.increment(49);
      a.send({ type: 'PAUSED' });
    }
    expect(a.getSnapshot().value).toBe('paused'); // 996 ms away
    clock.increment(4);
    expect(a.getSnapshot().value).toBe('invalidated');
    expect(a.getSnapshot().context.reason).toBe('TIMEOUT');
  });

  it('a granted resume stops the pause timer; the next pause gets the whole timeout again', () => {
    const clock = simulatedClock();
    const a = createActor(appHandleMachine, { clock, input }).start();
    a.send({ type: 'OPENED' });
    a.send({ type: 'PAUSED' });
    clock.increment(900);
    a.send({ type: 'RESUMING' });
    a.send({ type: 'GRANTED' });
    clock.increment(500);
    expect(a.getSnapshot().value).toBe('active');
    a.send({ type: 'PAUSED' });
    clock.increment(999);
    expect(a.getSnapshot().value).toBe('paused');
    clock.increment(1);
    expect(a.getSnapshot().value).toBe('invalidated');
  });

  it('denied resume -> invalidated with the reason', () => {
    const a = createActor(appHandleMachine, { clock: simulatedClock(), input }).start();
    a.send({ type: 'OPENED' });
    a.send({ type: 'PAUSED' });
    a.send({ type: 'RESUMING' });
    a.send({ type: 'DENIED', reason: 'MODIFIED' });
    expect(a.getSnapshot().value).toBe('invalidated');
    expect(a.getSnapshot().context.reason).toBe('MODIFIED');
  });

  it('fail-fast handles reject I/O while paused instead of queueing', () => {
    let rejected = 0;
    const m = appHandleMachine.provide({ actions: { rejectIoUnavailable: () => void rejected++ } });
    const a = createActor(m, { clock: simulatedClock(), input: { ...input, onFailure: 'error' } }).start();
    a.send({ type: 'OPENED' });
    a.send({ type: 'PAUSED' });
    a.send({ type: 'IO' });
    expect(rejected).toBe(1);
    expect(a.getSnapshot().context.queued).toBe(0);
  });
});

describe('node session machine', () => {
  const sessionInput = {
    replicas: ['a', 'b'],
    heartbeatIntervalMs: 100,
    backoffBaseMs: 10,
    backoffMaxMs: 100,
    unavailableFailoverMs: 1000,
  };

  it('detects a silent replica one interval after an unanswered ping (AGENT_PROBE_INTERVALS), then fails over to the next replica', async () => {
    const clock = simulatedClock();
    const tried: string[] = [];
    let pings = 0;
    const m = nodeSessionMachine.provide({
      actors: {
        connect: fromPromise(
          async ({ input }: { input: { url: string } }) => (
            tried.push(input.url),
            { session: 's', replica: input.url, heartbeatIntervalMs: 100, available: true as boolean }
          ),
        ),
      },
      actions: { sendPing: () => void pings++ },
    });
    const a = createActor(m, { clock, input: sessionInput }).start();
    await new Promise((r) => setImmediate(r));
    expect(a.getSnapshot().matches('connected')).toBe(true);
    clock.increment(100);
    expect(pings).toBe(1);
    a.send({ type: 'HEARD' });
    clock.increment(100);
    expect(pings).toBe(2);
    clock.increment(99); // no answer to the second ping yet
    expect(a.getSnapshot().matches('connected')).toBe(true);
    clock.increment(1);
    expect(a.getSnapshot().value).toBe('reconnecting');
    clock.increment(0);
    await new Promise((r) => setImmediate(r));
    expect(tried).toEqual(['a', 'b']);
    expect(a.getSnapshot().context.replica).toBe('b');
  });

  it('pauses handles on a dismount notice and resumes them on the next one', async () => {
    const clock = simulatedClock();
    const calls: string[] = [];
    const m = nodeSessionMachine.provide({
      actors: {
        connect: fromPromise(async () => ({
          session: 's',
          replica: 'a',
          heartbeatIntervalMs: 100,
          available: true as boolean,
        })),
      },
      actions: { pauseHandles: () => void calls.push('pause'), resumeHandles: () => void calls.push('resume') },
    });
    const a = createActor(m, { clock, input: sessionInput }).start();
    await new Promise((r) => setImmediate(r));
    a.send({ type: 'STORAGE_UNAVAILABLE' });
    a.send({ type: 'STORAGE_AVAILABLE' });
    expect(calls).toEqual(['resume', 'pause', 'resume']);
  });

  it('welcomed by a replica whose store is away, it resumes nothing until the store is back', async () => {
    const clock = simulatedClock();
    const calls: string[] = [];
    const m = nodeSessionMachine.provide({
      actors: {
        connect: fromPromise(async () => ({
          session: 's',
          replica: 'a',
          heartbeatIntervalMs: 100,
          available: false as boolean,
        })),
      },
      actions: { pauseHandles: () => void calls.push('pause'), resumeHandles: () => void calls.push('resume') },
    });
    const a = createActor(m, { clock, input: sessionInput }).start();
    await new Promise((r) => setImmediate(r));
    expect(a.getSnapshot().matches({ connected: { storage: 'unavailable' } })).toBe(true);
    a.send({ type: 'STORAGE_AVAILABLE' });
    expect(calls).toEqual(['pause', 'resume']);
  });
});

describe('replica handle machine', () => {
  it('holds a lost session for the hold period, then releases it', () => {
    const clock = simulatedClock();
    const a = createActor(replicaHandleMachine, {
      clock,
      input: { target: 't', requestId: 'r', mode: 'write', session: 's', holdMs: 500, resume: false },
    }).start();
    expect(a.getSnapshot().value).toBe('active');
    a.send({ type: 'SESSION_LOST' });
    expect(a.getSnapshot().value).toBe('paused');
    clock.increment(500);
    expect(a.getSnapshot().value).toBe('released');
  });

  it('starts in resuming for a resume and ends invalidated when denied', () => {
    const a = createActor(replicaHandleMachine, {
      clock: simulatedClock(),
      input: { target: 't', requestId: 'r', mode: 'write', session: 's', holdMs: 0, resume: true },
    }).start();
    expect(a.getSnapshot().value).toBe('resuming');
    a.send({ type: 'DENIED', reason: 'MODIFIED' });
    expect(a.getSnapshot().value).toBe('invalidated');
  });
});
