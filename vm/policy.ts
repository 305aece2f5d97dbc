/**
 * The VM supervisor's decisions, pure: inputs (a disk handle's change of state, the clock's time, QEMU's
 * own run state, an operator's command) in, intents (QMP `stop`, `cont`, `quit`, a wake-up at a time) out.
 * No socket, timer or clock here: vm/supervisor.ts carries the intents out.
 *
 * The rules (docs/protocol.md, "Virtual machines: stopAfterMs and the resume policy"):
 * - a disk whose handle has been paused (or resuming) for `stopAfterMs` stops the VM (`stop`), so the
 *   guest's clock and its I/O timeouts stand still; 0 stops it at the pause;
 * - once every disk is served again (resume granted, or denied under `report`), a VM this supervisor
 *   stopped is continued (`cont`); one an operator stopped is left to the operator;
 * - a denied resume (the handle invalidated) does what the disk's policy says: `leave-paused` keeps (or
 *   puts) the VM stopped and records why (the disk, the reason, the denial's details) until an operator
 *   resumes it accepting the change; `kill` ends QEMU (`quit`); `report` lets the VM run, and the export
 *   answers the guest's requests to that disk with EIO.
 */
import type { HandleState } from '../actors/application.js';

export type ResumePolicy = 'leave-paused' | 'kill' | 'report';
export const RESUME_POLICIES: readonly ResumePolicy[] = ['leave-paused', 'kill', 'report'];

/**
 * Default stopAfterMs: 10 s. Short enough that the guest's own timeouts never fire while its disk is
 * away (Linux's block layer times a request out after 30 s and warns of a hung task after 120 s), long
 * enough that a failover (a second or two) never stops the guest at all.
 */
export const DEFAULT_STOP_AFTER_MS = 10_000;

export interface DiskSpec {
  target: string;
  /** What a denied resume of this disk does (default `leave-paused`). */
  policy?: ResumePolicy;
}

/** A denied resume, as recorded for status and explain. */
export interface Denial {
  target: string;
  /** The invalidation's reason (MODIFIED, SUPERSEDED, TIMEOUT, CLOSED_BY_STORAGE, FORBIDDEN). */
  reason: string;
  /** When the denial was seen (ms since the epoch). */
  at: number;
  policy: ResumePolicy;
  /** What else the denial said (the version the handle last saw, the changed ranges when the store gives them). */
  details: Record<string, unknown>;
}

export interface DiskView {
  target: string;
  policy: ResumePolicy;
  state: HandleState | 'unopened';
  /** Since when the disk has not been served (paused or resuming), if it is not. */
  pausedAt?: number | undefined;
  denial?: Denial | undefined;
}

/** The VM as the supervisor sees it. */
export type VmPhase = 'running' | 'stopped' | 'held' | 'killed' | 'exited';

export interface VmState {
  stopAfterMs: number;
  disks: Map<string, DiskView>;
  /** Who stopped the VM, if it is stopped: this supervisor (it continues it) or an operator. */
  stoppedBy: 'supervisor' | 'operator' | undefined;
  /** Why it was stopped (or killed), in words. */
  why: string | undefined;
  /** Whether `quit` was sent (or QEMU is gone): nothing more is asked of it. */
  ended: 'killed' | 'exited' | undefined;
  /** Denials an operator accepted (`resume --accept-modified`): they hold the VM no longer. */
  accepted: Set<string>;
}

export type VmInput =
  | { type: 'disk'; target: string; state: HandleState; at: number; reason?: string; details?: Record<string, unknown> }
  | { type: 'tick'; at: number }
  /** QEMU stopped or continued the guest on its own (or someone else did, through another monitor). */
  | { type: 'qemu'; running: boolean; at: number }
  | { type: 'exited'; at: number }
  | { type: 'operator-stop'; at: number }
  | { type: 'operator-resume'; at: number; acceptModified: boolean };

export type VmIntent =
  | { type: 'stop'; why: string }
  | { type: 'cont'; why: string }
  | { type: 'quit'; why: string }
  /** Step again with a `tick` at this time (the earliest a paused disk reaches stopAfterMs). */
  | { type: 'wake'; at: number }
  /** An operator's command refused: the error code (the denial's reason, or CLOSED) and why. */
  | { type: 'refuse'; code: string; why: string };

export function initialVm(disks: DiskSpec[], stopAfterMs = DEFAULT_STOP_AFTER_MS): VmState {
  if (!Number.isSafeInteger(stopAfterMs) || stopAfterMs < 0)
    throw new RangeError(`stopAfterMs must be a non-negative integer (got ${stopAfterMs})`);
  const map = new Map<string, DiskView>();
  for (const d of disks) {
    const policy = d.policy ?? 'leave-paused';
    if (!RESUME_POLICIES.includes(policy)) throw new RangeError(`unknown resume policy ${String(policy)}`);
    map.set(d.target, { target: d.target, policy, state: 'unopened' });
  }
  return { stopAfterMs, disks: map, stoppedBy: undefined, why: undefined, ended: undefined, accepted: new Set() };
}

/** Where the VM stands: running, stopped (waiting for its disks), held by a denial, killed, exited. */
export function phaseOf(s: VmState): VmPhase {
  if (s.ended) return s.ended;
  if (holding(s).length > 0 && s.stoppedBy) return 'held';
  return s.stoppedBy ? 'stopped' : 'running';
}

/** The denials that keep the VM stopped: `leave-paused` disks invalidated and not accepted by an operator. */
export function holding(s: VmState): Denial[] {
  const out: Denial[] = [];
  for (const d of s.disks.values())
    if (d.denial && d.policy === 'leave-paused' && !s.accepted.has(d.target)) out.push(d.denial);
  return out;
}

const waiting = (d: DiskView) => d.pausedAt !== undefined && (d.state === 'paused' || d.state === 'resuming');

/** Step the VM with one input; mutates `s` and returns what to do. */
export function stepVm(s: VmState, input: VmInput): VmIntent[] {
  if (s.ended) {
    return input.type === 'operator-resume' || input.type === 'operator-stop'
      ? [{ type: 'refuse', code: 'CLOSED', why: `the VM was ${s.ended}` }]
      : [];
  }
  const out: VmIntent[] = [];
  switch (input.type) {
    case 'disk': {
      const d = s.disks.get(input.target);
      if (!d) return [];
      const was = d.state;
      d.state = input.state;
      if (input.state === 'paused' || input.state === 'resuming') d.pausedAt ??= input.at;
      else d.pausedAt = undefined;
      if (input.state === 'active' && was !== 'active' && d.denial) {
        // A fresh handle (the guest's connection reopened the target): the old denial is history.
        d.denial = undefined;
        s.accepted.delete(d.target);
      }
      if (input.state === 'invalidated') {
        const denial: Denial = {
          target: d.target,
          reason: input.reason ?? 'MODIFIED',
          at: input.at,
          policy: d.policy,
          details: input.details ?? {},
        };
        d.denial = denial;
        if (d.policy === 'kill') {
          s.ended = 'killed';
          s.why = `${d.target}: resume denied (${denial.reason}); policy kill`;
          return [{ type: 'quit', why: s.why }];
        }
        if (d.policy === 'leave-paused') {
          s.why = `${d.target}: resume denied (${denial.reason}); policy leave-paused`;
          if (!s.stoppedBy) {
            s.stoppedBy = 'supervisor';
            out.push({ type: 'stop', why: s.why });
          }
          return out;
        }
      }
      break;
    }
    case 'qemu':
      // Someone else stopped or continued the guest: follow it, and never undo an operator's choice.
      if (input.running) s.stoppedBy = undefined;
      else s.stoppedBy ??= 'operator';
      return [];
    case 'exited':
      s.ended = 'exited';
      s.why = 'QEMU exited';
      return [];
    case 'operator-stop':
      if (!s.stoppedBy) out.push({ type: 'stop', why: 'stopped by an operator' });
      s.stoppedBy = 'operator';
      s.why = 'stopped by an operator';
      return out;
    case 'operator-resume': {
      const held = holding(s);
      if (held.length > 0 && !input.acceptModified)
        return [
          {
            type: 'refuse',
            code: held[0]!.reason,
            why: `resume denied for ${held.map((h) => `${h.target} (${h.reason})`).join(', ')}: continuing lets the guest see I/O errors on it; resume with --accept-modified to continue anyway`,
          },
        ];
      for (const h of held) s.accepted.add(h.target);
      const wasStopped = s.stoppedBy !== undefined;
      s.stoppedBy = undefined;
      s.why = undefined;
      return wasStopped ? [{ type: 'cont', why: 'resumed by an operator' }] : [];
    }
    case 'tick':
      break;
  }
  const now = input.at;
  // Stop: a disk not served for stopAfterMs. Otherwise wake when the first would reach it.
  if (!s.stoppedBy) {
    let due: DiskView | undefined;
    let next = Infinity;
    for (const d of s.disks.values()) {
      if (!waiting(d)) continue;
      const at = d.pausedAt! + s.stopAfterMs;
      if (at <= now) due ??= d;
      else next = Math.min(next, at);
    }
    if (due) {
      s.stoppedBy = 'supervisor';
      s.why = `${due.target} paused for ${now - due.pausedAt!} ms (stopAfterMs ${s.stopAfterMs})`;
      out.push({ type: 'stop', why: s.why });
    } else if (next < Infinity) out.push({ type: 'wake', at: next });
    return out;
  }
  // Continue: a VM this supervisor stopped, once every disk is served (or reported) and no denial holds it.
  if (s.stoppedBy === 'supervisor' && holding(s).length === 0) {
    const blocked = [...s.disks.values()].some((d) => waiting(d));
    if (!blocked) {
      s.stoppedBy = undefined;
      const reported = [...s.disks.values()].filter((d) => d.denial && d.policy === 'report');
      const why =
        reported.length > 0
          ? `continued; ${reported.map((d) => `${d.target} (${d.denial!.reason})`).join(', ')} reported to the guest as I/O errors`
          : 'every disk resumed';
      s.why = undefined;
      out.push({ type: 'cont', why });
    }
  }
  return out;
}
