/**
 * An in-memory disk with a page cache, for the deterministic simulation: what a read sees is not
 * what survives power loss until it is fsynced. No real I/O, no timers; the same calls give the same
 * result every time.
 *
 * - A file's `data` is what reads see; its `durable` content is what survives power loss. fsync
 *   (by descriptor or by path) copies data to durable.
 * - A directory's entries (name -> file) change at once in the cache on create, rename and remove,
 *   and durably only when the directory is fsynced. A file created and never dir-fsynced vanishes on
 *   power loss; a rename not followed by fsyncDir is undone.
 * - Directories made by mkdirp are durable at once (the real disk fsyncs their parents).
 * - Descriptors point at files, not names: after a rename over a file, a descriptor opened on the old
 *   file still writes to it, and those writes are lost with it.
 */
import { posix } from 'node:path';
import type { KeptDisk } from '../actors/kept.js';

interface SimFile {
  data: string;
  durable: string;
}

interface SimDir {
  entries: Map<string, SimFile>;
  durableEntries: Map<string, SimFile>;
}

export interface SimDiskOptions {
  /**
   * On power loss, how many bytes of a file's unsynced appended tail reach the disk anyway (a torn
   * write keeps a prefix). Called once per such file, in path order. Default: none.
   */
  tear?: (unsyncedBytes: number) => number;
}

const diskError = (code: string, what: string) => Object.assign(new Error(`${code}: ${what}`), { code });

export class SimDisk implements KeptDisk {
  private readonly dirs = new Map<string, SimDir>();
  private readonly fds = new Map<number, SimFile>();
  private nextFd = 3;
  private failing: string | undefined;
  private readonly tear: (unsyncedBytes: number) => number;

  constructor(options: SimDiskOptions = {}) {
    this.tear = options.tear ?? (() => 0);
    this.dirs.set('/', { entries: new Map(), durableEntries: new Map() });
  }

  /** While a code is set, writeFile, append, fsync, fsyncPath, fsyncDir and rename throw it; undefined clears. */
  fail(code: string | undefined): void {
    this.failing = code;
  }

  /**
   * The machine loses power: every open descriptor is gone, every directory is back to its durable
   * entries and every file to its durable content, plus a prefix of its unsynced appended tail if the
   * tear option keeps one.
   */
  powerLoss(): void {
    this.fds.clear();
    for (const dir of this.dirs.values()) dir.entries = new Map(dir.durableEntries);
    const seen = new Set<SimFile>();
    for (const path of this.paths((d) => d.durableEntries)) {
      const file = this.lookup(path, (d) => d.durableEntries);
      if (!file || seen.has(file)) continue;
      seen.add(file);
      let kept = file.durable;
      if (file.data.startsWith(file.durable) && file.data.length > file.durable.length) {
        const tail = Buffer.from(file.data.slice(file.durable.length), 'utf8');
        const bytes = Math.max(0, Math.min(tail.length, Math.floor(this.tear(tail.length))));
        kept += tail.subarray(0, bytes).toString('utf8');
      }
      file.data = kept;
      file.durable = kept;
    }
  }

  /** Every file's path, as reads see them, sorted. */
  files(): string[] {
    return this.paths((d) => d.entries);
  }

  mkdirp(dir: string): void {
    for (let d = norm(dir); !this.dirs.has(d); d = posix.dirname(d))
      this.dirs.set(d, { entries: new Map(), durableEntries: new Map() });
  }

  exists(path: string): boolean {
    const p = norm(path);
    return this.dirs.has(p) || this.lookup(p, (d) => d.entries) !== undefined;
  }

  read(path: string): string {
    const file = this.lookup(norm(path), (d) => d.entries);
    if (!file) throw diskError('ENOENT', `no such file: ${path}`);
    return file.data;
  }

  writeFile(path: string, text: string): void {
    this.check();
    const file = this.lookup(norm(path), (d) => d.entries) ?? this.create(path);
    file.data = text;
  }

  openAppend(path: string): number {
    const file = this.lookup(norm(path), (d) => d.entries) ?? this.create(path);
    const fd = this.nextFd++;
    this.fds.set(fd, file);
    return fd;
  }

  append(fd: number, text: string): void {
    this.check();
    this.open(fd).data += text;
  }

  fsync(fd: number): void {
    this.check();
    const file = this.open(fd);
    file.durable = file.data;
  }

  fsyncPath(path: string): void {
    this.check();
    const file = this.lookup(norm(path), (d) => d.entries);
    if (!file) throw diskError('ENOENT', `no such file: ${path}`);
    file.durable = file.data;
  }

  fsyncDir(dir: string): void {
    this.check();
    const d = this.dirs.get(norm(dir));
    if (!d) throw diskError('ENOENT', `no such directory: ${dir}`);
    d.durableEntries = new Map(d.entries);
  }

  rename(from: string, to: string): void {
    this.check();
    const [fromDir, fromName] = this.parent(from);
    const file = fromDir.entries.get(fromName);
    if (!file) throw diskError('ENOENT', `no such file: ${from}`);
    const [toDir, toName] = this.parent(to);
    fromDir.entries.delete(fromName);
    toDir.entries.set(toName, file);
  }

  close(fd: number): void {
    this.open(fd);
    this.fds.delete(fd);
  }

  remove(path: string): void {
    const p = norm(path);
    this.dirs.get(posix.dirname(p))?.entries.delete(posix.basename(p));
  }

  private check(): void {
    if (this.failing !== undefined) throw diskError(this.failing, 'simulated disk error');
  }

  private open(fd: number): SimFile {
    const file = this.fds.get(fd);
    if (!file) throw diskError('EBADF', `bad file descriptor: ${fd}`);
    return file;
  }

  private parent(path: string): [SimDir, string] {
    const p = norm(path);
    const dir = this.dirs.get(posix.dirname(p));
    if (!dir) throw diskError('ENOENT', `no such directory: ${posix.dirname(p)}`);
    return [dir, posix.basename(p)];
  }

  private create(path: string): SimFile {
    const [dir, name] = this.parent(path);
    const file: SimFile = { data: '', durable: '' };
    dir.entries.set(name, file);
    return file;
  }

  private lookup(path: string, view: (d: SimDir) => Map<string, SimFile>): SimFile | undefined {
    const dir = this.dirs.get(posix.dirname(path));
    return dir ? view(dir).get(posix.basename(path)) : undefined;
  }

  private paths(view: (d: SimDir) => Map<string, SimFile>): string[] {
    const out: string[] = [];
    for (const [d, dir] of this.dirs) for (const name of view(dir).keys()) out.push(posix.join(d, name));
    return out.sort();
  }
}

/** Paths are absolute and normalised; a relative path is taken from `/` (the simulation has no cwd). */
const norm = (path: string) => posix.resolve('/', path);
