/**
 * The clock a store on this host judges lock expiries by. Replica processes on one host share a
 * SQLite file, so they need one clock, and it must not jump: an operator or NTP stepping the wall
 * clock forward would otherwise expire every lock at once and hand active writers' targets to others.
 *
 * It is the host's monotonic clock (Node's `process.hrtime`: CLOCK_MONOTONIC on Linux), milliseconds
 * since boot, the same in every process of the host and never stepped, named by the boot it counts
 * from: a database written during another boot counts its expiries on a clock that is gone. The boot
 * is the kernel's boot id on Linux; elsewhere the boot time to the minute (wall clock minus the
 * monotonic one), so a wall-clock step at most renames the clock, which only makes locks last longer.
 */
import { readFileSync } from 'node:fs';

export interface HostClock {
  /** `boot:<id>` for the monotonic clock of one boot (`wall` names the wall clock, which older databases used). */
  readonly name: string;
  now(): number;
}

const BOOT_ID = '/proc/sys/kernel/random/boot_id';

export function hostClock(): HostClock {
  let id = '';
  try {
    id = readFileSync(BOOT_ID, 'utf8').trim();
  } catch {
    // not Linux (or no /proc): the boot is told by its time, below
  }
  const now = () => Number(process.hrtime.bigint() / 1_000_000n);
  if (!/^[0-9a-f-]{8,64}$/.test(id)) id = `~${Math.round((Date.now() - now()) / 60_000)}`;
  return { name: `boot:${id}`, now };
}
