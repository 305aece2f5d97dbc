/** The status view: its lines, fitted to a terminal, and redrawn in place while `up` runs. */

/** Redraw the status view in place on a terminal (every 0.5 s), as plain lines otherwise (every 5 s). */
export function liveView(status: () => Record<string, unknown>, tty: boolean, json = false): () => void {
  let lines = 0;
  const render = () => {
    const st = status();
    // Piped or logged, each view says when it was taken; with --json it is one JSON line.
    if (json)
      return void process.stdout.write(JSON.stringify({ event: 'status', at: new Date().toISOString(), ...st }) + '\n');
    const size = terminalSize();
    const out = tty
      ? fitFrame(statusLines(st, size.cols < WIDE), size)
      : [`-- ${new Date().toISOString()}`, ...statusLines(st)];
    if (tty && lines > 0) process.stdout.write(`\x1b[${lines}A\x1b[0J`);
    process.stdout.write(out.join('\n') + '\n');
    lines = tty ? out.length : 0;
  };
  const timer = setInterval(render, tty ? 500 : 5000);
  render();
  return () => clearInterval(timer);
}

/** A terminal narrower than this gets the short handle lines. */
export const WIDE = 120;

/** The terminal's size, 80x24 when it does not say. */
export function terminalSize(): { cols: number; rows: number } {
  return { cols: process.stdout.columns || 80, rows: process.stdout.rows || 24 };
}

/**
 * A view redrawn in place, as a terminal of `cols` x `rows` shows it whole: each line cut to fit (a
 * line that wraps takes two rows, and the next redraw, going back one per line, would leave a stale
 * one), and at most `rows - 1` lines (the cursor takes the last row), those that do not fit counted.
 */
export function fitFrame(lines: string[], { cols, rows }: { cols: number; rows: number }): string[] {
  const height = Math.max(2, rows - 1);
  const shown =
    lines.length <= height
      ? lines
      : [
          ...lines.slice(0, height - 1),
          `  +${lines.length - height + 1} more (a taller terminal or 'safe-resume status' shows every line)`,
        ];
  const width = Math.max(10, cols - 1);
  return shown.map((l) => (l.length <= width ? l : `${l.slice(0, width - 1)}…`));
}

/**
 * The status view: one line per replica and node, one per handle. `short`: handle lines for a narrow
 * terminal (state and times first; no verified count, replica, requestId or last error).
 */
export function statusLines(st: Record<string, unknown>, short = false): string[] {
  const s = st as {
    etcd?: Array<{ id: string; state: string; endpoint: string }>;
    replicas: Array<{ id: string; state: string; sessions: number; storeError?: string | null }>;
    nodes: Array<{
      id: string;
      state: string;
      replica: string | null;
      cause?: string | null;
      partitioned: boolean;
      nbd?: {
        url: string;
        tls?: string | null;
        connections: Array<{
          target: string;
          principal?: string;
          state: string;
          reason: string | null;
          requests: number;
        }>;
      } | null;
    }>;
    handles: Array<{
      node: string;
      app: string;
      target: string;
      state: string;
      reason: string | null;
      acked: number;
      verified: number;
      failed: number;
      lastError: string | null;
      requestId?: string | null;
      inStateMs?: number;
      pauseLeftMs?: number | null;
      writesPerS?: number;
      hold?: string | null;
      holdLeftMs?: number | null;
    }>;
  };
  const out: string[] = [];
  const secs = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;
  for (const m of s.etcd ?? []) out.push(`${m.id.padEnd(10)} ${m.state.padEnd(11)} ${m.endpoint}`);
  for (const r of s.replicas)
    out.push(
      `${r.id.padEnd(10)} ${r.state.padEnd(11)} sessions=${r.sessions}${r.storeError ? `  store: ${r.storeError}` : ''}`,
    );
  for (const n of s.nodes)
    out.push(
      `${n.id.padEnd(10)} ${n.state.padEnd(11)} on ${n.replica ?? '-'}${n.partitioned ? '  (partitioned)' : ''}${n.cause ? `  cause: ${n.cause}` : ''}`,
    );
  for (const n of s.nodes) {
    if (n.nbd) out.push(`  ${`${n.id}/nbd`.padEnd(14)} ${n.nbd.url}${n.nbd.tls ? `  tls=${n.nbd.tls}` : ''}`);
    for (const c of n.nbd?.connections ?? [])
      out.push(
        `  ${`${n.id}/nbd`.padEnd(14)} ${c.target.padEnd(12)} ${c.state.padEnd(11)}${c.principal ? ` as=${c.principal}` : ''} in-flight=${c.requests}${c.reason ? ` reason=${c.reason}` : ''}`,
      );
  }
  for (const h of s.handles) {
    const node = s.nodes.find((n) => n.id === h.node);
    const timing = `${h.inStateMs !== undefined ? ` for=${secs(h.inStateMs)}` : ''}${h.pauseLeftMs != null ? ` timeout-in=${secs(h.pauseLeftMs)}` : ''}${h.holdLeftMs != null ? ` hold-in=${secs(h.holdLeftMs)}` : h.hold ? ` hold=${h.hold}` : ''}${h.writesPerS !== undefined ? ` writes/s=${h.writesPerS}` : ''}`;
    if (short) {
      out.push(
        `  ${`${h.node}/${h.app}`.padEnd(14)} ${h.target.padEnd(12)} ${h.state.padEnd(11)}${timing.replace(/ writes\/s=\S+/, '')} acked=${h.acked} failed=${h.failed}${h.reason ? ` reason=${h.reason}` : ''}`,
      );
      continue;
    }
    out.push(
      `  ${`${h.node}/${h.app}`.padEnd(14)} ${h.target.padEnd(12)} ${h.state.padEnd(11)}${timing} on=${node?.replica ?? '-'} acked=${h.acked} verified=${h.verified} failed=${h.failed}${h.reason ? ` reason=${h.reason}` : ''}${h.requestId ? ` requestId=${h.requestId}` : ''}${h.lastError ? ` last=${h.lastError}` : ''}`,
    );
  }
  return out;
}
