/**
 * Scenarios as data (after cockroachdb/datadriven, as raft's testdata/ uses it). A scenario file is a
 * `#` comment saying what it proves, then blocks: one or more command lines, a `----` line, and the
 * output those commands print, up to a blank line. Blank lines and `#` lines between blocks are kept.
 *
 *     # A foreign writer after the hold period makes the resume be denied.
 *     cluster replicas=2 nodes=2 hold=500ms
 *     ----
 *     ok
 *
 * `runScenario` plays a file over the simulated world (sim/world.ts: simulated clock, seeded
 * network, memory store, the real actors; not the random fault schedules) and returns the file with
 * every block's output replaced by what the commands printed now: equal to the input when the
 * behaviour is the one written down, and otherwise the rewrite to review (UPDATE=1 in
 * test/scenarios.test.ts writes it back). The same file prints the same output on every run.
 *
 * Commands (sim/scenario-commands.ts; D is a duration such as 300ms or 2s):
 *   cluster [replicas=2] [nodes=1] [hold=500ms] [pause-timeout=30s] [seed=1] [heartbeat=100ms]
 *   open node/app target [write|read] [on-failure=error] [requestId=rN] [pause-timeout=D] [nowait]
 *   write node/app target [@offset] ("text" | size=N) [nowait]      offsets and sizes take KiB, MiB
 *   read node/app target [@offset] [length] [nowait]
 *   close node/app target
 *   partition node [from=replica-k] / heal node / drop-replies node [from=replica-k]
 *   drop-link node [at=TYPE] [times=N]      close the node's connections (now, or as it sends TYPE)
 *   hold-replies node TYPE[,TYPE] / release-replies node      hold back (then deliver) replies of TYPE
 *   kill-replica / restart-replica / dismount / mount replica-k
 *   reboot-storage [down=200ms] / store-unavailable replica-k for=D
 *   crash-agent node [after=resume-granted] / restart-agent node
 *   crash-app node/app / restart-app node/app / move node/app [target] to=node-k
 *   power-loss node / disk-error node ENOSPC|EIO|ok / clock-step host +D|-D
 *   advance D / stabilize [limit=60s]
 *   handles / agents / data target
 *
 * What they print: each handle's state changes, one line per handle per command
 * (`node-1/app-1 vm1.disk: paused -> resuming -> invalidated (MODIFIED)`), each operation's result in
 * the command it settles in (`write node-1/app-1 vm1.disk @0 "abc": ok`), requestIds as aliases r1,
 * r2, ... in the order first seen; `ok` when a block printed nothing.
 */
import { COMMANDS } from './scenario-commands.js';
import { Args, Driver } from './scenario-driver.js';

export interface Block {
  /** Line number (1-based) of the block's first command, for error messages. */
  line: number;
  commands: string[];
  expected: string[];
}

export type Part = { kind: 'text'; lines: string[] } | ({ kind: 'block' } & Block);

export const SEPARATOR = '----';

export function parseScenario(text: string): Part[] {
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const parts: Part[] = [];
  const textLine = (l: string) => {
    const last = parts.at(-1);
    if (last?.kind === 'text') last.lines.push(l);
    else parts.push({ kind: 'text', lines: [l] });
  };
  let i = 0;
  while (i < lines.length) {
    const l = lines[i]!;
    if (l.trim() === '' || l.startsWith('#')) {
      textLine(l);
      i++;
      continue;
    }
    const start = i;
    const commands: string[] = [];
    while (i < lines.length && lines[i] !== SEPARATOR) {
      const c = lines[i]!;
      if (c.trim() === '' || c.startsWith('#'))
        throw new Error(`line ${start + 1}: a block's commands must be followed by a ${SEPARATOR} line`);
      commands.push(c);
      i++;
    }
    if (i >= lines.length)
      throw new Error(`line ${start + 1}: a block's commands must be followed by a ${SEPARATOR} line`);
    i++; // the separator
    const expected: string[] = [];
    while (i < lines.length && lines[i]!.trim() !== '') expected.push(lines[i++]!);
    parts.push({ kind: 'block', line: start + 1, commands, expected });
  }
  return parts;
}

export function renderScenario(parts: Part[], outputs: ReadonlyMap<Block, string[]>): string {
  const out: string[] = [];
  for (const p of parts) {
    if (p.kind === 'text') out.push(...p.lines);
    else out.push(...p.commands, SEPARATOR, ...(outputs.get(p) ?? p.expected));
  }
  return out.join('\n') + '\n';
}

/** Split a command line into words; a double-quoted word is a JSON string (escapes allowed). */
export function words(line: string): string[] {
  const out: string[] = [];
  const re = /\s*("(?:[^"\\]|\\.)*"|[^\s"]+)/y;
  let end = 0;
  for (let m = re.exec(line); m; m = re.exec(line)) {
    out.push(m[1]!);
    end = re.lastIndex;
  }
  if (line.slice(end).trim() !== '') throw new Error(`cannot parse: ${line}`);
  return out;
}

/** Play every block of a scenario; returns the scenario with each block's output as printed now. */
export async function runScenario(text: string): Promise<string> {
  const parts = parseScenario(text);
  const outputs = new Map<Block, string[]>();
  const d = new Driver();
  try {
    for (const p of parts) {
      if (p.kind !== 'block') continue;
      for (const cmd of p.commands) {
        const [name, ...args] = words(cmd);
        const handler = COMMANDS[name!];
        if (!handler)
          throw new Error(`line ${p.line}: unknown command ${name} (known: ${Object.keys(COMMANDS).join(', ')})`);
        try {
          await handler(d, new Args(args), cmd);
        } catch (err) {
          d.print(`error: ${err instanceof Error ? err.message : String(err)}`);
        }
        await d.settleMicrotasks();
        d.endCommand();
      }
      const lines = d.takeOutput();
      outputs.set(p, lines.length > 0 ? lines : ['ok']);
    }
  } finally {
    await d.shutdown();
  }
  return renderScenario(parts, outputs);
}
