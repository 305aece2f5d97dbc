/**
 * Hosts for tests: Linux network namespaces on a bridge, each with its own address, made and deleted
 * by the test. Everything lives in namespaces of its own, the bridge included (a "switch" namespace):
 * the machine's own interfaces are never touched.
 */
import { execFileSync } from 'node:child_process';
import type { HostPlan } from '../runtime/hosts.js';

export interface Hosts {
  /** Each host's namespace and address, by name. */
  hosts: Record<string, { netns: string; address: string; dev: string }>;
  /** The plan `safe-resume up --netns` reads (every host but `except`). */
  plan(except?: string[]): HostPlan;
  /** Process ids still running in a host's namespace. */
  pids(name: string): number[];
  /** Delete every namespace (their links go with them). */
  remove(): void;
}

const ip = (...args: string[]) => execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/**
 * Make one namespace per name, linked to a bridge, with addresses 10.231.<net>.<10+i>/24. Throws with
 * the reason (not root, no `ip`, namespaces not allowed here) rather than returning fewer hosts.
 */
export function makeHosts(names: string[], net = 0): Hosts {
  const tag = `sr${process.pid % 100_000}`;
  const sw = `${tag}-sw`;
  const made: string[] = [];
  const hosts: Hosts['hosts'] = {};
  const remove = () => {
    for (const ns of made.reverse()) {
      try {
        ip('netns', 'del', ns);
      } catch {
        // already gone
      }
    }
    made.length = 0;
  };
  try {
    ip('netns', 'add', sw);
    made.push(sw);
    ip('-n', sw, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', sw, 'link', 'set', 'br0', 'up');
    names.forEach((name, i) => {
      const ns = `${tag}-${name}`;
      const port = `v${i}`;
      ip('netns', 'add', ns);
      made.push(ns);
      ip('-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port, 'netns', sw);
      ip('-n', sw, 'link', 'set', port, 'master', 'br0');
      ip('-n', sw, 'link', 'set', port, 'up');
      const address = `10.231.${net}.${10 + i}`;
      ip('-n', ns, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      ip('-n', ns, 'link', 'set', 'eth0', 'up');
      hosts[name] = { netns: ns, address, dev: 'eth0' };
    });
  } catch (err) {
    remove();
    const e = err as Error & { stderr?: string };
    throw new Error(`cannot make network namespaces here (needs root and iproute2): ${e.stderr?.trim() || e.message}`, {
      cause: err,
    });
  }
  return {
    hosts,
    plan: (except = []) => ({ hosts: Object.fromEntries(Object.entries(hosts).filter(([n]) => !except.includes(n))) }),
    pids: (name) =>
      ip('netns', 'pids', hosts[name]!.netns)
        .split('\n')
        .filter((l) => l.trim().length > 0)
        .map(Number),
    remove,
  };
}
