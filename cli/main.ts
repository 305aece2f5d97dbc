#!/usr/bin/env node
/** The safe-resume command line. */
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { EXIT, OperatorError } from '../runtime/operator-error.js';
import { SafeResumeError } from '../errors.js';
import { didYouMean } from './suggest.js';
import { ALL_FLAGS, COMMAND_FLAGS, COMMANDS, completion } from './completion.js';
import { negativeValues, UsageError } from './args.js';
import { HELP, helpFor } from './help.js';

/** This package's version, from its package.json. */
function version(): string {
  const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/**
 * Each command's module is loaded when it runs: a CLI call pays only for what its command uses (a
 * `status` does not load the store adapters, the replica or the inspector).
 */
async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = negativeValues(argv);
  try {
    switch (cmd) {
      case 'up':
        return await (await import('./up.js')).up(rest);
      case 'status':
      case 'kill':
      case 'restart':
      case 'partition':
      case 'heal':
      case 'dismount':
      case 'reboot-storage':
      case 'move':
      case 'write':
      case 'read':
      case 'export':
      case 'create':
      case 'explain':
      case 'grant':
      case 'revoke':
      case 'events':
      case 'down':
        return await (await import('./control.js')).control(cmd, rest);
      case 'clean':
        return await (await import('./clean.js')).clean(rest);
      case 'logs':
        return await (await import('./logs.js')).logsCommand(rest);
      case 'completion':
        return completion(rest);
      case 'sim':
        return await (await import('./sim.js')).sim(rest);
      case 'bench':
        return await (await import('./bench.js')).benchCommand(rest);
      case 'fuzz':
        return await (await import('../bench/fuzz.js')).main(rest);
      case 'vm':
        return await (
          await import('./vm.js')
        ).vmCommand(
          rest,
          (t) => process.stdout.write(t),
          (t) => process.stderr.write(t),
        );
      case 'replica':
        return await (await import('./replica.js')).replicaCommand(rest, (t) => process.stdout.write(t));
      case 'credentials':
        return (await import('./credentials.js')).credentials(
          rest,
          (t) => process.stdout.write(t),
          (t) => process.stderr.write(t),
        );
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(rest[0] && !rest[0].startsWith('-') ? helpFor(rest[0]) : HELP);
        return 0;
      case '--version':
      case '-V':
      case 'version':
        process.stdout.write(`safe-resume ${version()}\n`);
        return 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(cmd)}${didYouMean(cmd, COMMANDS)}`);
    }
  } catch (err) {
    // An option no command of this name takes: the one it is closest to, if one is close.
    const unknown =
      (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION'
        ? /'(-{1,2})([^'=]+)'/.exec((err as Error).message)
        : null;
    if (unknown) {
      const flags = COMMAND_FLAGS[cmd ?? ''] ?? ALL_FLAGS;
      // A requestId (21+ characters of nanoid's alphabet) may start with '-': it was read as options.
      const id = argv.find((a) => /^-[A-Za-z0-9_-]{20,}$/.test(a));
      const hint = id
        ? `\n${id} looks like a requestId: one that starts with '-' goes after '--' (safe-resume ${cmd ?? '<command>'} [options] -- ${id})`
        : '';
      process.stderr.write(
        `safe-resume: unknown option ${unknown[1]}${unknown[2]}${didYouMean(unknown[2]!, flags, (f) => `--${f}`)}${hint}\nRun 'safe-resume help${cmd && cmd in COMMAND_FLAGS ? ` ${cmd}` : ''}' for usage.\n`,
      );
      return EXIT.usage;
    }
    if (err instanceof OperatorError) {
      process.stderr.write(`safe-resume: ${err.message}\n`);
      return err.exitCode;
    }
    if (err instanceof SafeResumeError) {
      process.stderr.write(`safe-resume: ${err.code}: ${err.message}\n`);
      return 1;
    }
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`safe-resume: ${(err as Error).message}\nRun 'safe-resume help' for usage.\n`);
      return 2;
    }
    process.stderr.write(`safe-resume: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

// A closed pipe (e.g. `safe-resume up | head`) must not bring the cluster down: the view just stops.
process.stdout.on('error', () => undefined);
process.exitCode = await main(process.argv.slice(2));
