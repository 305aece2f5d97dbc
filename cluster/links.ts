/**
 * The network faults of a local cluster: a node cut off the replicas by its fault proxies, and a host's
 * link cut (--netns); each healed on command, after its time, or when the cluster goes down.
 */
import { SafeResumeError } from '../errors.js';
import { setLink, type Host } from '../runtime/hosts.js';
import type { FaultProxy } from '../transport/fault-proxy.js';
import type { ControlResult } from './launcher-options.js';

export class Links {
  /** Hosts whose link is cut now (--netns). */
  private readonly cut = new Set<string>();

  constructor(
    /** Each node's fault proxies, one per replica (none on hosts of their own). */
    private readonly proxies: Map<string, FaultProxy[]>,
    private readonly host: (id: string) => Host | undefined,
    /** Run `fn` after `ms`, unless the cluster is brought down first. */
    private readonly later: (ms: number, fn: () => void) => void,
  ) {}

  /** Whether `id` is cut off now: partitioned by its proxies, or its host's link cut. */
  isCutOff(id: string): boolean {
    return (this.proxies.get(id) ?? []).some((p) => p.mode === 'partition') || this.cut.has(id);
  }

  partition(node: string, forS?: number): ControlResult {
    const proxies = this.proxies.get(node);
    if (!proxies) throw new SafeResumeError('INVALID_ARGUMENT', `no node called ${JSON.stringify(node)}`);
    for (const p of proxies) p.partition();
    const host = this.host(node);
    if (host) {
      setLink(host, false);
      this.cut.add(node);
    }
    if (forS) this.later(forS * 1000, () => this.heal(node));
    return { ok: true, partitioned: node, ...(forS ? { healsInS: forS } : {}) };
  }

  /** Heal `node` (or every node); `healed` names only those that were cut off (partitioned or losing replies). */
  heal(node?: string): ControlResult {
    const names = node ? [node] : [...this.proxies.keys()];
    const healed: string[] = [];
    for (const n of names) {
      const proxies = this.proxies.get(n);
      if (!proxies) throw new SafeResumeError('INVALID_ARGUMENT', `no node called ${JSON.stringify(n)}`);
      let was = proxies.some((p) => p.mode !== 'pass');
      for (const p of proxies) p.heal();
      const host = this.host(n);
      if (host && this.cut.delete(n)) {
        setLink(host, true);
        was = true;
      }
      if (was) healed.push(n);
    }
    return { ok: true, healed };
  }

  /** Cut a replica's (or node's) host off the network for `forS` seconds (--netns). */
  cutLink(id: string, forS: number): ControlResult {
    const host = this.host(id);
    if (!host)
      throw new SafeResumeError('INVALID_ARGUMENT', `${id} has no host of its own (--netns) whose link could be cut`);
    setLink(host, false);
    this.cut.add(id);
    this.later(forS * 1000, () => this.cut.delete(id) && setLink(host, true));
    return { ok: true, cut: id, restoresInS: forS };
  }

  /** Give back every link this cluster cut: the namespaces are the operator's. */
  restoreAll(): void {
    for (const id of this.cut) {
      const host = this.host(id);
      if (host) setLink(host, true);
    }
    this.cut.clear();
  }
}
