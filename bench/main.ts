/** `npm run bench` / `safe-resume bench`: run, print the table, write the results. */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GROUPS, machine, ROOT, runBench, table, writeResults, type Figure, type Group } from './run.js';

/** Put the latest table into BENCHMARKS.md between its markers, keeping the written analysis around it. */
function writeMarkdown(figures: Figure[]): void {
  const path = join(ROOT, 'BENCHMARKS.md');
  const generated = `<!-- bench:start -->\nMeasured ${new Date().toISOString().slice(0, 10)} on ${machine()} by \`npm run bench\`.\n\n${table(figures)}\n\n![failover time against N](bench/results/failover.svg)\n<!-- bench:end -->`;
  const old = existsSync(path)
    ? readFileSync(path, 'utf8')
    : '# Benchmarks\n\n<!-- bench:start -->\n<!-- bench:end -->\n';
  writeFileSync(path, old.replace(/<!-- bench:start -->[\s\S]*<!-- bench:end -->/, generated));
}

const HELP = `safe-resume bench [--json] [--smoke] [--only GROUP,...]

Measures every figure next to its baseline in the same run and prints the table.
  --json     the figures as JSON on stdout (the table is not printed)
  --smoke    tiny sizes, to check the harness works; not a measurement, nothing is written
  --only     run some groups only (${GROUPS.join(', ')}); nothing is written
A full run writes bench/results/latest.json, bench/results/failover.svg and the table in BENCHMARKS.md.
The heap figures need node --expose-gc (npm run bench and safe-resume bench run with it).
`;

export async function bench(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP);
    return 0;
  }
  const json = argv.includes('--json');
  const smoke = argv.includes('--smoke');
  let only: Group[] = [...GROUPS];
  const at = argv.indexOf('--only');
  if (at >= 0) {
    const names = (argv[at + 1] ?? '').split(',').filter(Boolean);
    const bad = names.filter((n) => !(GROUPS as readonly string[]).includes(n));
    if (names.length === 0 || bad.length > 0) {
      process.stderr.write(
        `bench: --only takes groups from: ${GROUPS.join(', ')}${bad.length ? ` (unknown: ${bad.join(', ')})` : ''}\n`,
      );
      return 2;
    }
    only = names as Group[];
  }
  const unknown = argv.filter(
    (a, i) => !['--json', '--smoke', '--only', '--help', '-h'].includes(a) && argv[i - 1] !== '--only',
  );
  if (unknown.length > 0) {
    process.stderr.write(`bench: unknown argument ${unknown[0]}\n\n${HELP}`);
    return 2;
  }
  const log = (l: string) => process.stderr.write(`bench: ${l}\n`);
  const figures = await runBench(smoke, log, only);
  if (!smoke && at < 0) {
    writeResults(figures);
    writeMarkdown(figures);
  }
  const exposeGc = typeof (globalThis as { gc?: unknown }).gc === 'function';
  if (json) process.stdout.write(JSON.stringify({ machine: machine(), smoke, exposeGc, figures }) + '\n');
  else
    process.stdout.write(
      `${machine()}${smoke ? ' (smoke run: tiny sizes, not a measurement)' : ''}\n\n${table(figures)}\n`,
    );
  return 0;
}

if (process.argv[1]?.endsWith('bench/main.js')) {
  bench(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
