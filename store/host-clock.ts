/**
 * The clock a store on this host judges lock expiries by. Replica processes on one host share a
 * SQLite file, so they need one clock, and it must not jump: an operator or NTP stepping the wall
 * clock forward would otherwise expire every lock at once and hand active writers' targets to others.
 *
 * On Linux it is CLOCK_MONOTONIC (Node's `process.hrtime`), milliseconds since boot, the same in every
 * process of the host and never stepped, named by the kernel's boot id: a database written during
 * another boot counts its expiries on a clock that is gone. Elsewhere it is the wall clock.
 */
import { readFileSync } from 'node:fs';

export interface HostClock {
  /** `boot:<id>` for the monotonic clock of one boot, `wall` for the wall clock. */
  readonly name: string;
  now(): number;
}

const BOOT_ID = '/proc/sys/kernel/random/boot_id';

export function hostClock(): HostClock {
  let id = '';
  try {
    id = readFileSync(BOOT_ID, 'utf8').trim();
  } catch {
    // not Linux (or no /proc): the wall clock is all there is
  }
  if (!/^[0-9a-f-]{8,64}$/.test(id)) return { name: 'wall', now: () => Date.now() };
  return { name: `boot:${id}`, now: () => Number(process.hrtime.bigint() / 1_000_000n) };
}
