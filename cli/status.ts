/** `status` of one replica, node or target, and `status -w`: the status again every second. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { EXIT, OperatorError } from '../runtime/operator-error.js';
import { didYouMean } from './suggest.js';
import { fitFrame, statusLines, terminalSize, WIDE } from './view.js';

/** What `status` is narrowed to: one replica or node (`status node-1`), or one target's handles (`--target`). */
export interface StatusFilter {
  id: string | undefined;
  target: string | undefined;
}

/**
 * The status of one replica or node (its line, and a node's handles and NBD connections), or of one
 * target (its handles and connections, and the nodes they are on). An id the cluster does not have is
 * NOT_FOUND.
 */
export function filterStatus(
  st: Record<string, unknown>,
  f: StatusFilter,
): { ok: boolean; code?: string; message?: string } & Record<string, unknown> {
  type Node = { id: string; nbd?: { connections: Array<{ target: string }> } | null };
  let replicas = (st.replicas ?? []) as Array<{ id: string }>;
  let nodes = (st.nodes ?? []) as Node[];
  let etcd = st.etcd as Array<{ id: string }> | undefined;
  let handles = (st.handles ?? []) as Array<{ node: string; target: string }>;
  if (f.id !== undefined) {
    const ids = [...(etcd ?? []), ...replicas, ...nodes].map((x) => x.id);
    if (!ids.includes(f.id))
      return {
        ok: false,
        code: 'NOT_FOUND',
        message: `no replica or node called ${JSON.stringify(f.id)}${didYouMean(f.id, ids)} (there are: ${ids.join(', ')})`,
      };
    etcd = etcd?.filter((m) => m.id === f.id);
    replicas = replicas.filter((r) => r.id === f.id);
    nodes = nodes.filter((n) => n.id === f.id);
    handles = handles.filter((h) => h.node === f.id);
  }
  if (f.target !== undefined) {
    handles = handles.filter((h) => h.target === f.target);
    nodes = nodes
      .map((n) =>
        n.nbd ? { ...n, nbd: { ...n.nbd, connections: n.nbd.connections.filter((c) => c.target === f.target) } } : n,
      )
      .filter((n) => handles.some((h) => h.node === n.id) || (n.nbd?.connections.length ?? 0) > 0);
    replicas = [];
    etcd = etcd ? [] : undefined;
  }
  return { ...st, ok: true, ...(etcd ? { etcd } : {}), replicas, nodes, handles };
}

/**
 * `status -w`: the status every second until Ctrl-C, redrawn in place on a terminal, as timestamped
 * blocks when piped, as JSON lines with --json. Ends by itself (exit 0) when the cluster stops.
 */
export async function watchStatus(
  dir: string,
  url: string,
  token: string,
  json: boolean,
  view: StatusFilter,
): Promise<number> {
  const tty = process.stdout.isTTY === true && !json;
  let stop = false;
  let wake: () => void = () => undefined;
  const quit = () => ((stop = true), wake());
  process.once('SIGINT', quit);
  process.once('SIGTERM', quit);
  let lines = 0;
  while (!stop) {
    const at = new Date().toISOString();
    let st: Record<string, unknown> | undefined;
    try {
      st = (await (
        await fetch(url + '/status?hold=1', {
          headers: { authorization: `Bearer ${token}` },
          signal: AbortSignal.timeout(5000),
        })
      ).json()) as Record<string, unknown>;
    } catch {
      if (!existsSync(join(dir, 'control.json'))) {
        process.stdout.write(
          json
            ? JSON.stringify({ at, ok: false, code: 'NOT_RUNNING', message: `the cluster in ${dir} stopped` }) + '\n'
            : `${at}  the cluster in ${dir} stopped\n`,
        );
        return 0;
      }
    }
    if (st?.ok && (view.id !== undefined || view.target !== undefined)) {
      st = filterStatus(st, view);
      if (!st.ok) throw new OperatorError(`${String(st.code)}: ${String(st.message)}`, EXIT.notFound);
    }
    if (json)
      process.stdout.write(
        JSON.stringify({
          at,
          ...(st ?? { ok: false, code: 'UNAVAILABLE', message: 'the launcher did not answer within 5 s' }),
        }) + '\n',
      );
    else {
      const size = terminalSize();
      const view = [
        `safe-resume status  ${at}  (every second; Ctrl-C to stop)`,
        ...(st ? statusLines(st, tty && size.cols < WIDE) : ['  the launcher did not answer within 5 s']),
      ];
      const out = tty ? fitFrame(view, size) : view;
      if (tty && lines > 0) process.stdout.write(`\x1b[${lines}A\x1b[0J`);
      process.stdout.write(out.join('\n') + '\n');
      lines = tty ? out.length : 0;
    }
    await new Promise<void>((r) => {
      const t = setTimeout(r, 1000);
      wake = () => (clearTimeout(t), r());
    });
  }
  return 0;
}
