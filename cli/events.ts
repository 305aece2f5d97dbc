/** `events`: --since read as a time or how long ago, and --follow. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { formatEvent, type TimelineEvent } from '../cluster/timeline.js';
import { UsageError } from './args.js';

/** `--since`: a time (ISO 8601, e.g. 2026-12-02T10:00:00Z) or how long ago (90s, 10m, 2h, 1d, 500ms), as ms since the epoch. */
export function parseSince(text: string): number {
  const d = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (d)
    return (
      Date.now() -
      Number(d[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[d[2] as 'ms' | 's' | 'm' | 'h' | 'd']
    );
  const at = /^\d{4}-\d\d-\d\d/.test(text) ? Date.parse(text) : NaN;
  if (Number.isNaN(at))
    throw new UsageError(
      `--since ${JSON.stringify(text)}: give a time (2026-12-02T10:00:00Z) or how long ago (30s, 10m, 2h, 1d)`,
    );
  return at;
}

/**
 * `events --follow`: the events so far (since `since`), then each one as it is added, until Ctrl-C or
 * until the cluster stops (exit 0 either way). With --json, one event per line.
 */
export async function followEvents(
  dir: string,
  url: string,
  token: string,
  o: { target: string | undefined; since: number | undefined; json: boolean },
): Promise<number> {
  let stop = false;
  let wake: () => void = () => undefined;
  const quit = () => ((stop = true), wake());
  process.once('SIGINT', quit);
  process.once('SIGTERM', quit);
  let after = 0;
  while (!stop) {
    const q = new URLSearchParams({
      ...(o.target !== undefined ? { target: o.target } : {}),
      ...(after > 0 ? { after: String(after) } : {}),
    });
    let got: { events: TimelineEvent[]; next: number } | undefined;
    try {
      got = (await (
        await fetch(`${url}/events${q.size ? `?${q.toString()}` : ''}`, {
          headers: { authorization: `Bearer ${token}` },
          signal: AbortSignal.timeout(5000),
        })
      ).json()) as { events: TimelineEvent[]; next: number };
    } catch {
      if (!existsSync(join(dir, 'control.json'))) {
        process.stdout.write(
          o.json
            ? JSON.stringify({ ok: false, code: 'NOT_RUNNING', message: `the cluster in ${dir} stopped` }) + '\n'
            : `the cluster in ${dir} stopped\n`,
        );
        return 0;
      }
    }
    if (got) {
      const events = got.events.filter((e) => o.since === undefined || e.at >= o.since);
      if (events.length)
        process.stdout.write(events.map((e) => (o.json ? JSON.stringify(e) : formatEvent(e))).join('\n') + '\n');
      after = got.next;
    }
    await new Promise<void>((r) => {
      const t = setTimeout(r, 500);
      wake = () => (clearTimeout(t), r());
    });
  }
  return 0;
}
