/** `npm run bench` / `safe-resume bench`: run, print the table, write the results. */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { machine, ROOT, runBench, table, writeResults, type Figure } from './run.js';

/** Put the latest table into BENCHMARKS.md between its markers, keeping the written analysis around it. */
function writeMarkdown(figures: Figure[]): void {
  const path = join(ROOT, 'BENCHMARKS.md');
  const generated = `<!-- bench:start -->\nMeasured ${new Date().toISOString().slice(0, 10)} on ${machine()} by \`npm run bench\`.\n\n${table(figures)}\n\n![failover time against N](bench/results/failover.svg)\n<!-- bench:end -->`;
  const old = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n\n<!-- bench:start -->\n<!-- bench:end -->\n';
  writeFileSync(path, old.replace(/<!-- bench:start -->[\s\S]*<!-- bench:end -->/, generated));
}

export async function bench(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const smoke = argv.includes('--smoke');
  const log = (l: string) => process.stderr.write(`bench: ${l}\n`);
  const figures = await runBench(smoke, log);
  if (!smoke) {
    writeResults(figures);
    writeMarkdown(figures);
  }
  if (json) process.stdout.write(JSON.stringify({ machine: machine(), smoke, figures }) + '\n');
  else process.stdout.write(`${machine()}${smoke ? ' (smoke run: tiny sizes, not a measurement)' : ''}\n\n${table(figures)}\n`);
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
