/** `create` and `export`: disk sizes as people write them, and the URL a block client opens a target with. */
import { MAX_DISK_BYTES } from '../store/types.js';
import { targetUrl } from '../frontends/nbd.js';
import { UsageError } from './args.js';

/** A size as people write it: 4G, 512M, 1T, 4GiB, 65536 (K, M, G, T: powers of 1024). */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`--size ${JSON.stringify(text)}: give bytes or a number with K, M, G or T (e.g. 4G)`);
  const unit = m[2]!.toUpperCase();
  const bytes = Number(m[1]) * (unit ? 1024 ** ('KMGT'.indexOf(unit) + 1) : 1);
  if (!Number.isSafeInteger(bytes) || bytes < 1 || bytes > MAX_DISK_BYTES)
    throw new UsageError(`--size ${text}: a disk is a whole number of bytes from 1 to 1T`);
  return bytes;
}

/** 4294967296 -> "4 GiB"; sizes that are not whole units in bytes. */
export function formatSize(n: number): string {
  for (const [unit, f] of [
    ['TiB', 2 ** 40],
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['KiB', 2 ** 10],
  ] as const)
    if (n >= f && n % f === 0) return `${n / f} ${unit}`;
  return `${n} bytes`;
}

/** The URL a block client opens `target` with on `node` (default: the first node with an export). */
export function exportUrl(
  status: Record<string, unknown>,
  target: string,
  node: string | undefined,
): { ok: boolean; code?: string; message?: string } & Record<string, unknown> {
  const nodes = (status.nodes ?? []) as Array<{ id: string; nbd?: { url: string; tls?: string | null } | null }>;
  if (node !== undefined && !nodes.some((n) => n.id === node))
    throw new UsageError(`no node called ${JSON.stringify(node)}`);
  const at = nodes.find((n) => (node === undefined || n.id === node) && n.nbd);
  if (!at?.nbd)
    return {
      ok: false,
      code: 'UNAVAILABLE',
      message: node
        ? `${node} serves no NBD export (it is down, or on a host of its own)`
        : 'no node serves an NBD export',
    };
  return {
    ok: true,
    target,
    node: at.id,
    url: targetUrl(at.nbd.url, target),
    ...(at.nbd.tls ? { tls: targetUrl(at.nbd.tls, target) } : {}),
  };
}
