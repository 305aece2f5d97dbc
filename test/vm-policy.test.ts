/**
 * The VM supervisor's decisions, driven with data: when a paused disk stops the VM, when it is
 * continued, what each resume policy does with a denial, and what an operator's stop and resume do.
 */
import { describe, expect, it } from 'vitest';
import type { HandleState } from '../actors/application.js';
import { holding, initialVm, phaseOf, stepVm, type DiskSpec, type VmInput } from '../vm/policy.js';

const disk = (target: string, state: HandleState, at: number, reason?: string): VmInput =>
  reason ? { type: 'disk', target, state, at, reason } : { type: 'disk', target, state, at };
const kinds = (intents: { type: string }[]) => intents.map((i) => i.type);

function vm(disks: DiskSpec[], stopAfterMs = 1000) {
  const s = initialVm(disks, stopAfterMs);
  stepVm(s, disk('a', 'active', 0));
  if (s.disks.has('b')) stepVm(s, disk('b', 'active', 0));
  return s;
}

describe('stopAfterMs', () => {
  it('a disk paused shorter than stopAfterMs never stops the VM; one paused past it does', () => {
    const s = vm([{ target: 'a' }]);
    expect(stepVm(s, disk('a', 'paused', 100))).toEqual([{ type: 'wake', at: 1100 }]);
    expect(stepVm(s, disk('a', 'resuming', 500))).toEqual([{ type: 'wake', at: 1100 }]);
    expect(stepVm(s, disk('a', 'active', 600))).toEqual([]);
    expect(stepVm(s, { type: 'tick', at: 1100 })).toEqual([]);
    expect(phaseOf(s)).toBe('running');
    stepVm(s, disk('a', 'paused', 2000));
    expect(stepVm(s, { type: 'tick', at: 2999 })).toEqual([{ type: 'wake', at: 3000 }]);
    const stop = stepVm(s, { type: 'tick', at: 3000 });
    expect(kinds(stop)).toEqual(['stop']);
    expect(phaseOf(s)).toBe('stopped');
    expect(s.why).toMatch(/a paused for 1000 ms/);
  });

  it('0 stops at the pause; cont only once every disk is served again', () => {
    const s = vm([{ target: 'a' }, { target: 'b' }], 0);
    expect(kinds(stepVm(s, disk('a', 'paused', 10)))).toEqual(['stop']);
    expect(stepVm(s, disk('b', 'paused', 11))).toEqual([]);
    expect(stepVm(s, disk('a', 'active', 20))).toEqual([]);
    expect(stepVm(s, disk('b', 'active', 30))).toEqual([{ type: 'cont', why: 'every disk resumed' }]);
    expect(phaseOf(s)).toBe('running');
  });

  it('a VM stopped by someone else is not continued when the disks come back', () => {
    const s = vm([{ target: 'a' }], 0);
    stepVm(s, { type: 'qemu', running: false, at: 5 });
    expect(stepVm(s, disk('a', 'paused', 10))).toEqual([]);
    expect(stepVm(s, disk('a', 'active', 20))).toEqual([]);
    expect(phaseOf(s)).toBe('stopped');
  });

  it('refuses a negative or fractional stopAfterMs and an unknown policy', () => {
    expect(() => initialVm([{ target: 'a' }], -1)).toThrow(RangeError);
    expect(() => initialVm([{ target: 'a' }], 1.5)).toThrow(RangeError);
    expect(() => initialVm([{ target: 'a', policy: 'ignore' as never }])).toThrow(/unknown resume policy/);
  });
});

describe('the resume policy on a denial', () => {
  it('leave-paused keeps the VM stopped with the reason, until an operator accepts the change', () => {
    const s = vm([{ target: 'a' }], 0);
    stepVm(s, disk('a', 'paused', 10));
    expect(
      stepVm(s, {
        type: 'disk',
        target: 'a',
        state: 'invalidated',
        at: 20,
        reason: 'MODIFIED',
        details: { version: 3 },
      }),
    ).toEqual([]);
    expect(phaseOf(s)).toBe('held');
    expect(holding(s)).toEqual([
      { target: 'a', reason: 'MODIFIED', at: 20, policy: 'leave-paused', details: { version: 3 } },
    ]);
    expect(s.why).toBe('a: resume denied (MODIFIED); policy leave-paused');
    const refused = stepVm(s, { type: 'operator-resume', at: 30, acceptModified: false });
    expect(kinds(refused)).toEqual(['refuse']);
    expect(phaseOf(s)).toBe('held');
    expect(kinds(stepVm(s, { type: 'operator-resume', at: 40, acceptModified: true }))).toEqual(['cont']);
    expect(phaseOf(s)).toBe('running');
  });

  it('leave-paused stops a VM still running when the denial comes before stopAfterMs', () => {
    const s = vm([{ target: 'a' }], 60_000);
    stepVm(s, disk('a', 'paused', 10));
    expect(kinds(stepVm(s, disk('a', 'invalidated', 20, 'SUPERSEDED')))).toEqual(['stop']);
    expect(phaseOf(s)).toBe('held');
  });

  it('kill quits, once; nothing is asked of QEMU after', () => {
    const s = vm([{ target: 'a', policy: 'kill' }], 0);
    stepVm(s, disk('a', 'paused', 10));
    expect(kinds(stepVm(s, disk('a', 'invalidated', 20, 'MODIFIED')))).toEqual(['quit']);
    expect(phaseOf(s)).toBe('killed');
    expect(stepVm(s, disk('a', 'invalidated', 21, 'MODIFIED'))).toEqual([]);
    expect(kinds(stepVm(s, { type: 'operator-resume', at: 30, acceptModified: true }))).toEqual(['refuse']);
  });

  it('report continues the VM (its I/O to that disk fails), once the other disks are served', () => {
    const s = vm([{ target: 'a', policy: 'report' }, { target: 'b' }], 0);
    stepVm(s, disk('a', 'paused', 10));
    stepVm(s, disk('b', 'paused', 10));
    expect(stepVm(s, disk('a', 'invalidated', 20, 'MODIFIED'))).toEqual([]);
    const cont = stepVm(s, disk('b', 'active', 30));
    expect(cont).toEqual([{ type: 'cont', why: 'continued; a (MODIFIED) reported to the guest as I/O errors' }]);
    expect(phaseOf(s)).toBe('running');
    expect(holding(s)).toEqual([]);
  });
});
