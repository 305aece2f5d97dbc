/** `npm run bench` / `safe-resume bench`: run, print the table, write the results. */
import { machine, runBench, table, writeResults } from './run.js';

export async function bench(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const smoke = argv.includes('--smoke');
  const log = (l: string) => process.stderr.write(`bench: ${l}\n`);
  const figures = await runBench(smoke, log);
  if (!smoke) writeResults(figures);
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
