/** Reading the command line: usage errors, numbers and ports, and negative values after an option. */

export class UsageError extends Error {}

export function int(name: string, value: string | undefined, dflt: number, min = 0): number {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min)
    throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}

/** A TCP port from the command line (0: any free one). */
export function portNumber(name: string, value: string | undefined, dflt: number, min = 0): number {
  const n = value === undefined ? dflt : Number(value);
  if (!Number.isSafeInteger(n) || n < min || n > 65535)
    throw new UsageError(`--${name} must be a port number from ${min} to 65535, got ${JSON.stringify(value)}`);
  return n;
}

/** `1 node`, `2 nodes`. */
export const count = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? '' : 's'}`;

/**
 * `--size -5` as `--size=-5`: a negative number after an option is that option's value (to be refused
 * by its own check, in one line), not an option of its own.
 */
export function negativeValues(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = argv[i + 1];
    if (/^--[a-z][a-z-]*$/.test(a) && next !== undefined && /^-\d/.test(next)) out.push(`${a}=${argv[++i]}`);
    else out.push(a);
  }
  return out;
}
