/**
 * The connections a listener holds that have not authenticated yet, by source, and the fair rule for
 * which one goes when there are too many (SPEC "Fair limits: a flood from one source cannot keep an
 * authenticated node out"):
 *
 * - one source holds at most `perSource` of them: past that, its own oldest one goes (a flooder
 *   competes only with itself);
 * - all sources together hold at most `max`: past that, the oldest one of the source holding the
 *   most goes (the new connection is never the one refused).
 *
 * Within a source, a connection that has not sent a byte goes before one that has: a node's
 * connection sends its upgrade request in its first round trip and authenticates in a few
 * milliseconds, silent sockets never do. Everything here is bounded by `max`.
 */
import { isIPv4, isIPv6 } from 'node:net';

/**
 * The source a peer counts under: its IPv4 address (an IPv4-mapped IPv6 address `::ffff:a.b.c.d`
 * counts as `a.b.c.d`), or for IPv6 its /64 prefix (one host commonly holds a whole /64).
 */
export function sourceOf(address: string | undefined): string {
  if (address === undefined || address === '') return 'unknown';
  const bare = address.replace(/%.*$/, '');
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(bare);
  if (mapped && isIPv4(mapped[1]!)) return mapped[1]!;
  if (!isIPv6(bare)) return bare;
  return `${hextets(bare).slice(0, 4).join(':')}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address, without leading zeros. */
function hextets(addr: string): string[] {
  // A dotted IPv4 tail (::ffff:1.2.3.4, 64:ff9b::1.2.3.4) is two groups.
  const v4 = /(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(addr);
  const text = v4
    ? `${addr.slice(0, v4.index)}${((Number(v4[1]) << 8) | Number(v4[2])).toString(16)}:${((Number(v4[3]) << 8) | Number(v4[4])).toString(16)}`
    : addr;
  const [head = '', tail] = text.split('::');
  const left = head ? head.split(':') : [];
  const right = tail === undefined ? [] : tail ? tail.split(':') : [];
  const gap = tail === undefined ? [] : Array<string>(8 - left.length - right.length).fill('0');
  return [...left, ...gap, ...right].map((h) => parseInt(h, 16).toString(16));
}

interface Entry {
  readonly source: string;
  /** Whether the peer has sent nothing yet. */
  readonly silent: () => boolean;
  /** Drop the connection (it leaves the table when it closes, or at once by `drop`'s caller). */
  readonly drop: () => void;
}

/** What `admit` did to make room: which source it limited, and how many that source holds now. */
export interface Limited {
  source: string;
  held: number;
}

export class Unauthenticated {
  /** Per source, its connections oldest first (a Map keeps insertion order). */
  private readonly bySource = new Map<string, Set<Entry>>();
  private count = 0;

  constructor(
    private readonly max: number,
    private readonly perSource: number,
  ) {}

  get size(): number {
    return this.count;
  }

  /** How many connections `source` holds not yet authenticated. */
  held(source: string): number {
    return this.bySource.get(source)?.size ?? 0;
  }

  /**
   * Take in a new connection, dropping one held connection first if a limit is reached. Returns the
   * entry's removal (call it when the connection is trusted or closes; calling it again does nothing)
   * and, when one was dropped, whose.
   */
  admit(source: string, silent: () => boolean, drop: () => void): { remove: () => void; limited?: Limited } {
    let limited: Limited | undefined;
    const full = this.held(source) >= this.perSource ? source : this.count >= this.max ? this.largest() : undefined;
    if (full !== undefined) {
      const victims = this.bySource.get(full)!;
      let victim: Entry | undefined;
      for (const e of victims) {
        if (e.silent()) {
          victim = e;
          break;
        }
      }
      victim ??= victims.values().next().value!;
      this.delete(victim);
      victim.drop();
      limited = { source: full, held: 0 };
    }
    const entry: Entry = { source, silent, drop };
    let set = this.bySource.get(source);
    if (!set) this.bySource.set(source, (set = new Set()));
    set.add(entry);
    this.count++;
    if (limited) limited.held = this.held(limited.source);
    return { remove: () => this.delete(entry), ...(limited ? { limited } : {}) };
  }

  private delete(e: Entry): void {
    const set = this.bySource.get(e.source);
    if (!set?.delete(e)) return;
    this.count--;
    if (set.size === 0) this.bySource.delete(e.source);
  }

  /** The source holding the most; of equals, the one that has held connections the longest. */
  private largest(): string {
    let best: string | undefined;
    let most = -1;
    for (const [source, set] of this.bySource) {
      if (set.size > most) {
        best = source;
        most = set.size;
      }
    }
    return best!;
  }
}
