/**
 * The map in docs/architecture.md is checked against the code: each room (folder) imports only the
 * rooms its row names, no source file imports itself round a cycle, no source file outside test/ is
 * over the page limit, and the pure rooms touch no clock, timer, socket or file.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');
const SKIP = new Set(['node_modules', 'dist', 'test', '.git', 'bench/results']);
/** Longest a source file outside test/ may be: past it, a file is doing more than one job. */
const MAX_SOURCE_LINES = 450;

function sourceFiles(dir = ROOT): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    const rel = relative(ROOT, path);
    if (SKIP.has(rel) || name.startsWith('.')) return [];
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return name.endsWith('.ts') && !name.endsWith('.d.ts') && rel !== 'vitest.config.ts' ? [rel] : [];
  });
}

/** The room a file lives in: its top folder, or the file itself at the top. */
const roomOf = (file: string) => (file.includes('/') ? `${file.split('/')[0]}/` : file);

/** Relative imports (static, dynamic, re-exports) of one file, as repository paths of .ts files. */
function importsOf(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(join(ROOT, file), 'utf8'), true, true);
  return info.importedFiles
    .map((f) => f.fileName)
    .filter((name) => name.startsWith('.'))
    .map((name) => normalize(join(dirname(file), name)).replace(/\.js$/, '.ts'));
}

/**
 * The rooms table of docs/architecture.md: rows `| \`room\` | job | \`a\`, \`b\` |`; the third
 * column lists the rooms it may import (besides itself), or "nothing"; a file named there (`store/types.ts`)
 * allows only that file of its room.
 */
export function roomsTable(markdown: string): Map<string, Set<string>> {
  const table = new Map<string, Set<string>>();
  const section = markdown.split(/^## /m).find((s) => s.startsWith('Rooms'));
  if (!section) throw new Error('docs/architecture.md has no "## Rooms" section');
  for (const line of section.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 5 || !/^`[^`]+`$/.test(cells[1] ?? '')) continue;
    const room = cells[1]!.slice(1, -1);
    const may = [...(cells[3] ?? '').matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
    table.set(room, new Set(may));
  }
  return table;
}

function cycles(graph: Map<string, string[]>): string[][] {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const found: string[][] = [];
  const visit = (u: string) => {
    state.set(u, 'open');
    stack.push(u);
    for (const v of graph.get(u) ?? []) {
      if (state.get(v) === 'open') found.push([...stack.slice(stack.indexOf(v)), v]);
      else if (!state.has(v)) visit(v);
    }
    stack.pop();
    state.set(u, 'done');
  };
  for (const u of graph.keys()) if (!state.has(u)) visit(u);
  return found;
}

const files = sourceFiles();
const graph = new Map(files.map((f) => [f, importsOf(f)]));
const rooms = roomsTable(readFileSync(join(ROOT, 'docs', 'architecture.md'), 'utf8'));

describe('the map in docs/architecture.md', () => {
  it('names every room that holds source', () => {
    const unnamed = [...new Set(files.map(roomOf))].filter((r) => !rooms.has(r));
    expect(unnamed).toEqual([]);
  });

  it('each room imports only the rooms its row allows', () => {
    const broken: string[] = [];
    for (const [file, deps] of graph) {
      const from = roomOf(file);
      for (const dep of deps) {
        const to = roomOf(dep);
        const may = rooms.get(from);
        if (to !== from && !may?.has(to) && !may?.has(dep))
          broken.push(`${file} imports ${dep} (${from} may not use ${to})`);
      }
    }
    expect(broken).toEqual([]);
  });
});

describe('source files', () => {
  it('import no file that imports them back (no cycles)', () => {
    expect(cycles(graph).map((c) => c.join(' -> '))).toEqual([]);
  });

  it(`outside test/ are at most ${MAX_SOURCE_LINES} lines`, () => {
    const long = files
      .map((f) => ({ f, lines: readFileSync(join(ROOT, f), 'utf8').split('\n').length - 1 }))
      .filter(({ lines }) => lines > MAX_SOURCE_LINES)
      .map(({ f, lines }) => `${f}: ${lines} lines`);
    expect(long).toEqual([]);
  });

  it('in the pure rooms use no clock, timer, socket, file or process', () => {
    const pure = files.filter((f) => f.startsWith('core/') || f.startsWith('machines/') || /^store\/rules/.test(f));
    const banned =
      /\b(Date\.now|new Date\(|setTimeout|setInterval|setImmediate|performance\.now|process\.)|from ['"]node:(?!crypto['"])/;
    const found = pure.flatMap((f) =>
      readFileSync(join(ROOT, f), 'utf8')
        .split('\n')
        .map((line, i) => ({ line: line.replace(/\/\/.*$|^\s*\*.*$/, ''), at: `${f}:${i + 1}` }))
        .filter(({ line }) => banned.test(line))
        .map(({ line, at }) => `${at}: ${line.trim()}`),
    );
    expect(pure.length).toBeGreaterThan(5);
    expect(found).toEqual([]);
  });
});

describe('the docs', () => {
  it('link and name only files that exist', () => {
    const docs = [
      'README.md',
      'BENCHMARKS.md',
      ...readdirSync(join(ROOT, 'docs'))
        .filter((f) => f.endsWith('.md'))
        .map((f) => join('docs', f)),
    ];
    const missing = docs.flatMap((doc) => {
      const text = readFileSync(join(ROOT, doc), 'utf8');
      const links = [...text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)]
        .map((m) => m[1]!)
        .filter((t) => !/^[a-z]+:/.test(t))
        .map((t) => normalize(join(dirname(doc), t)));
      const named = [...text.matchAll(/`((?:[a-z-]+\/)+[\w.-]+\.ts)`/g)].map((m) => m[1]!);
      return [...links, ...named].filter((p) => !existsSync(join(ROOT, p))).map((p) => `${doc}: ${p}`);
    });
    expect(missing).toEqual([]);
  });
});
