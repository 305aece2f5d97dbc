/**
 * Several hosts on one machine: a plan that puts each process of the local cluster (etcd-N, replica-N,
 * node-N) in a Linux network namespace of its own, with its own address, as if on its own host. The
 * namespaces, their links and addresses are made beforehand (test/netns.ts does it with `ip netns` and
 * veth pairs on a bridge); the launcher only starts each process inside its namespace (`ip netns exec`),
 * and cuts or restores a host's link (`ip -n NS link set DEV down|up`) for faults.
 *
 * The plan file (`safe-resume up --netns FILE`):
 *   { "hosts": { "replica-1": { "netns": "sr-r1", "address": "10.231.0.21" }, ... } }
 * (each host may name its link device, `"dev"`, default `eth0`). Every process of the cluster needs a host.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { SafeResumeError } from '../errors.js';

const Host = z.object({
  netns: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'a namespace name of letters, digits, _ . -'),
  address: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}$/, 'an IPv4 address'),
  dev: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,15}$/)
    .default('eth0'),
});
export type Host = z.infer<typeof Host>;

export const HostPlan = z.object({ hosts: z.record(z.string(), Host) });
export type HostPlan = z.infer<typeof HostPlan>;

/** Read and check a plan; every id in `need` must have a host, and every namespace must exist. */
export function loadHostPlan(file: string, need: string[]): HostPlan {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SafeResumeError('INVALID_ARGUMENT', `--netns ${file}: ${(err as Error).message}`);
  }
  const plan = HostPlan.safeParse(raw);
  if (!plan.success)
    throw new SafeResumeError(
      'INVALID_ARGUMENT',
      `--netns ${file}: ${plan.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  const missing = need.filter((id) => !plan.data.hosts[id]);
  if (missing.length > 0)
    throw new SafeResumeError('INVALID_ARGUMENT', `--netns ${file}: no host for ${missing.join(', ')}`);
  let have: string;
  try {
    have = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  } catch (err) {
    throw new SafeResumeError(
      'UNAVAILABLE',
      `--netns needs the ip command (iproute2) and root: ${(err as Error).message}`,
    );
  }
  const names = new Set(have.split('\n').map((l) => l.split(' ')[0]));
  const absent = [...new Set(need.map((id) => plan.data.hosts[id]!.netns))].filter((ns) => !names.has(ns));
  if (absent.length > 0)
    throw new SafeResumeError(
      'INVALID_ARGUMENT',
      `--netns ${file}: no network namespace ${absent.join(', ')} (make them with ip netns add first)`,
    );
  return plan.data;
}

/** The command prefix that runs a program inside a host's namespace. */
export function inHost(h: Host, program: string): { command: string; args: string[] } {
  return { command: 'ip', args: ['netns', 'exec', h.netns, program] };
}

/** Take a host's link down (every connection through it stalls) or bring it back up. */
export function setLink(h: Host, up: boolean): void {
  execFileSync('ip', ['-n', h.netns, 'link', 'set', h.dev, up ? 'up' : 'down']);
}
