/** `clean`: remove a stopped cluster's data. */
import { parseArgs } from 'node:util';
import { resolve, join } from 'node:path';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { dirHolder } from '../cluster/dir-lock.js';
import { EXIT, OperatorError } from '../runtime/operator-error.js';
import { isClusterFile } from '../cluster/private-dir.js';
import { UsageError } from './args.js';
import { helpFor } from './help.js';

/** Remove a stopped cluster's data: its store, the nodes' kept requestIds, its logs and its key. */
export async function clean(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { dir: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) return (void process.stdout.write(helpFor('clean')), 0);
  if (positionals.length > 0) throw new UsageError('clean takes no arguments');
  const dir = resolve(values.dir ?? '.safe-resume');
  const say = (out: Record<string, unknown>, line: string) =>
    process.stdout.write((values.json ? JSON.stringify(out) : line) + '\n');
  if (!existsSync(dir)) {
    say({ ok: true, removed: [], kept: [] }, `nothing to clean: ${dir} does not exist`);
    return 0;
  }
  const holder = dirHolder(dir);
  if (holder)
    throw new OperatorError(
      `a cluster is running in ${dir} (launcher pid ${holder.pid}): stop it first with 'safe-resume down --dir ${dir}'`,
      EXIT.dirInUse,
    );
  const names = readdirSync(dir);
  const removed = names.filter(isClusterFile);
  for (const n of removed) rmSync(join(dir, n), { recursive: true, force: true });
  const kept = names.filter((n) => !removed.includes(n));
  if (kept.length === 0) rmSync(dir, { recursive: true, force: true });
  say(
    { ok: true, removed, kept },
    `removed ${removed.length === 0 ? 'nothing' : removed.join(', ')} from ${dir}${kept.length ? `; left what is not a cluster's: ${kept.join(', ')}` : ' (and the directory)'}`,
  );
  return 0;
}
