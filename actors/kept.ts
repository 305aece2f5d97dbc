/**
 * The node agent's durable node-local record of each application's open handles and their
 * requestIds, so a restarted agent (or application) can still resume them.
 *
 * A change is acknowledged (the call returns) only once it is on disk: appended and fsynced, or
 * written into a compacted log that was fsynced, renamed into place and whose directory was fsynced.
 */
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';

export interface KeptHandle {
  app: string;
  target: string;
  requestId: string;
  principal: string;
  mode: 'read' | 'write';
  /**
   * Read handles: the newest target version the handle saw. Its open's and its resumes' granted
   * versions are on disk before they are acknowledged; one learned from a read answer is kept later,
   * so a crash may leave an older one here (a reclaim then risks a needless denial, never a wrong grant).
   */
  version: number;
  /** Write handles: the handle instance (see ResumeItem.instance). Entries from before instances have none. */
  instance?: string;
  /** The instance is taking the requestId over and the store has not granted it yet. */
  takeover?: boolean;
}

/** One batch of changes: the puts first, then the removals, written and fsynced together. */
export interface KeptChanges {
  put: KeptHandle[];
  remove: string[];
}

export interface KeptIds {
  list(): KeptHandle[];
  find(app: string, target: string): KeptHandle | undefined;
  put(h: KeptHandle): void;
  remove(requestId: string): void;
  /** Put several at once (one write of the file). */
  putMany(hs: KeptHandle[]): void;
  /**
   * Puts and removals in one write and one fsync. Returns once the batch is durable; throws the disk's
   * error (with its `code`: ENOSPC, EIO, ...) otherwise, and then nothing of the batch is in the view.
   */
  apply(changes: KeptChanges): void;
  /** Let go of the file (what is kept stays on disk). */
  close?(): void;
  /**
   * Count one more start of the node agent, durably, and return the count: the agent's hand-over
   * counters start above every one an earlier start sent. `error`: the disk's, when the count could
   * not be kept (it is counted all the same; a later start may then count it again).
   */
  nextBoot?(): { boot: number; error?: Error | undefined };
}

/**
 * The few disk operations the file needs, synchronous, so the simulation can put a disk with a page
 * cache, power loss and errors (sim/disk.ts) where the node has node:fs. Errors are thrown as they
 * come, with their `code`.
 */
export interface KeptDisk {
  /** Create a directory and its missing parents, durably (their entries fsynced). */
  mkdirp(dir: string): void;
  exists(path: string): boolean;
  read(path: string): string;
  /** Create or truncate a file and write it. Not yet durable: see fsyncPath and fsyncDir. */
  writeFile(path: string, text: string): void;
  /** Open a file for appending, creating it if missing; returns a descriptor. */
  openAppend(path: string): number;
  /** Append the whole text (not yet durable: see fsync). */
  append(fd: number, text: string): void;
  fsync(fd: number): void;
  /** fsync a file by path. */
  fsyncPath(path: string): void;
  /** fsync a directory: its entries (files created, renamed or removed in it) become durable. */
  fsyncDir(dir: string): void;
  /** Rename atomically, replacing `to`. Durable once the directory is fsynced. */
  rename(from: string, to: string): void;
  close(fd: number): void;
  /** Remove a file if it exists. */
  remove(path: string): void;
}

/** The real disk (node:fs, synchronous). Created directories are 0700, created files 0600. */
export const nodeDisk: KeptDisk = {
  mkdirp(dir) {
    const first = mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (first === undefined) return;
    // Each created directory is an entry in its parent: fsync the parents, from the deepest up.
    const top = resolve(first);
    for (let d = resolve(dir); ; d = dirname(d)) {
      nodeDisk.fsyncDir(dirname(d));
      if (d === top || dirname(d) === d) break;
    }
  },
  exists: (path) => existsSync(path),
  read: (path) => readFileSync(path, 'utf8'),
  writeFile: (path, text) => writeFileSync(path, text, { mode: 0o600 }),
  openAppend: (path) => openSync(path, 'a', 0o600),
  append(fd, text) {
    const buf = Buffer.from(text, 'utf8');
    for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off, buf.length - off);
  },
  fsync: (fd) => fsyncSync(fd),
  fsyncPath(path) {
    const fd = openSync(path, 'r+');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  },
  fsyncDir(dir) {
    if (process.platform === 'win32') return; // directories cannot be opened there; NTFS journals renames
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  },
  rename: (from, to) => renameSync(from, to),
  close: (fd) => closeSync(fd),
  remove: (path) => rmSync(path, { force: true }),
};

export class MemoryKeptIds implements KeptIds {
  protected readonly byId = new Map<string, KeptHandle>();
  protected boots = 0;
  nextBoot(): { boot: number; error?: Error | undefined } {
    return { boot: ++this.boots };
  }
  /** app -> target -> requestId, so finding an application's handle does not scan them all (and needs no key string per handle). */
  private readonly byName = new Map<string, Map<string, string>>();
  list(): KeptHandle[] {
    return [...this.byId.values()];
  }
  find(app: string, target: string): KeptHandle | undefined {
    const id = this.byName.get(app)?.get(target);
    return id === undefined ? undefined : this.byId.get(id);
  }
  put(h: KeptHandle): void {
    this.apply({ put: [h], remove: [] });
  }
  remove(requestId: string): void {
    this.apply({ put: [], remove: [requestId] });
  }
  putMany(hs: KeptHandle[]): void {
    this.apply({ put: hs, remove: [] });
  }

  apply(changes: KeptChanges): void {
    for (const h of changes.put) checked(h, 'put');
    // What the batch overwrites, so a batch that does not reach the disk leaves no trace in the view.
    const oldIds = new Map<string, KeptHandle | undefined>();
    const oldNames: Array<[app: string, target: string, id: string | undefined]> = [];
    const rememberName = (app: string, target: string) =>
      oldNames.push([app, target, this.byName.get(app)?.get(target)]);
    const remember = (id: string) => {
      if (oldIds.has(id)) return;
      const old = this.byId.get(id);
      oldIds.set(id, old);
      if (old) rememberName(old.app, old.target);
    };
    const put: KeptHandle[] = [];
    const removed: string[] = [];
    for (const h of changes.put) {
      remember(h.requestId);
      rememberName(h.app, h.target);
      this.set(copy(h));
      put.push(h);
    }
    for (const id of changes.remove) {
      remember(id);
      if (this.forget(id)) removed.push(id);
    }
    if (put.length === 0 && removed.length === 0) return;
    try {
      this.persist(put, removed);
    } catch (err) {
      for (const [id, h] of oldIds) {
        if (h) this.byId.set(id, h);
        else this.byId.delete(id);
      }
      // Undone newest first, so each name ends as it was before the batch.
      for (let i = oldNames.length - 1; i >= 0; i--) {
        const [app, target, id] = oldNames[i]!;
        if (id === undefined) this.unname(app, target);
        else this.name(app, target, id);
      }
      throw err;
    }
  }

  protected set(h: KeptHandle): void {
    const old = this.byId.get(h.requestId);
    if (old) this.unname(old.app, old.target);
    this.byId.set(h.requestId, h);
    this.name(h.app, h.target, h.requestId);
  }
  protected forget(requestId: string): boolean {
    const old = this.byId.get(requestId);
    if (!old) return false;
    this.byId.delete(requestId);
    if (this.byName.get(old.app)?.get(old.target) === requestId) this.unname(old.app, old.target);
    return true;
  }
  private name(app: string, target: string, id: string): void {
    let targets = this.byName.get(app);
    if (!targets) this.byName.set(app, (targets = new Map<string, string>()));
    targets.set(target, id);
  }
  private unname(app: string, target: string): void {
    const targets = this.byName.get(app);
    if (!targets) return;
    targets.delete(target);
    if (targets.size === 0) this.byName.delete(app);
  }
  /** Make a change that is already in the view durable, or throw (and the view is rolled back). */
  protected persist(_put: KeptHandle[], _removed: string[]): void {}
}

/** A copy field by field (a spread copy gets a slower, bigger object layout in V8). */
function copy(h: KeptHandle): KeptHandle {
  const c: KeptHandle = {
    app: h.app,
    target: h.target,
    requestId: h.requestId,
    principal: h.principal,
    mode: h.mode,
    version: h.version,
  };
  if (h.instance !== undefined) c.instance = h.instance;
  if (h.takeover) c.takeover = true;
  return c;
}

/**
 * One line of the log. A single change is `{"put":handle}` or `{"rm":requestId}`; a batch of several
 * is one line `{"put":[...],"rm":[...]}` (puts first), so a batch cut short by a crash is all lost,
 * never half kept.
 */
type LogLine = { put?: KeptHandle | KeptHandle[]; rm?: string | string[] };

function logLine(put: KeptHandle[], removed: string[]): string {
  if (put.length === 1 && removed.length === 0) return JSON.stringify({ put: put[0] }) + '\n';
  if (put.length === 0 && removed.length === 1) return JSON.stringify({ rm: removed[0] }) + '\n';
  return JSON.stringify({ put, rm: removed }) + '\n';
}

/**
 * A log of JSON lines, one per change or batch of changes, appended (so a change costs one small
 * write and one fsync however many handles are kept) and compacted into a fresh file (written aside,
 * then renamed over) when most of it is stale. A line cut short by a crash is ignored on load: that
 * change was never acknowledged.
 *
 * After a failed write or fsync the log's tail is unknown (a partial line, or a line the caller was
 * told failed), so the next change rewrites the whole log from the view instead of appending.
 */
export class FileKeptIds extends MemoryKeptIds {
  readonly path: string;
  private readonly dir: string;
  private readonly disk: KeptDisk;
  private fd: number | undefined;
  /** Entries written to the log since it was last compacted (live or stale). */
  private written = 0;
  private closed = false;
  /** The file may differ from the view: rewrite it before the next change is acknowledged. */
  private stale = false;

  constructor(
    dir: string,
    private readonly nodeId: string,
    disk: KeptDisk = nodeDisk,
  ) {
    super();
    this.dir = dir;
    this.disk = disk;
    disk.mkdirp(dir);
    this.path = join(dir, `${nodeId}.handles.jsonl`);
    // The earlier format: one JSON array, rewritten on every change; read once, then removed.
    const legacy = join(dir, `${nodeId}.handles.json`);
    if (disk.exists(this.path)) this.load(disk.read(this.path));
    else if (disk.exists(legacy)) {
      const parsed: unknown = JSON.parse(disk.read(legacy));
      if (!Array.isArray(parsed)) throw new Error(`${legacy}: expected a JSON array of handles`);
      for (const h of parsed) this.set(checked(h, legacy));
    }
    try {
      this.compact();
    } catch {
      // The disk fails right now. What was read stays durable where it is (compaction writes aside);
      // the next change rewrites the log whole, and reports the error if the disk still fails. A
      // legacy file stays until then.
      this.stale = true;
      return;
    }
    try {
      disk.remove(legacy); // only once the log holding its entries is durable
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /**
   * The count of agent starts lives in a file of its own, `<node>.boot`: written aside, fsynced,
   * renamed over, the directory fsynced. A count that could not be kept is still counted in memory.
   */
  override nextBoot(): { boot: number; error?: Error | undefined } {
    const path = join(this.dir, `${this.nodeId}.boot`);
    // A count that cannot be read (a disk error, a damaged file) is counted on from what is known and
    // written again, so the next start counts from a good file.
    let unread: Error | undefined;
    try {
      if (this.boots === 0 && this.disk.exists(path)) {
        const n = Number(this.disk.read(path).trim());
        if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${path}: expected a whole number of agent starts`);
        this.boots = n;
      }
    } catch (err) {
      unread = err as Error;
    }
    const boot = ++this.boots;
    try {
      const tmp = `${path}.tmp`;
      this.disk.writeFile(tmp, `${boot}\n`);
      this.disk.fsyncPath(tmp);
      this.disk.rename(tmp, path);
      this.disk.fsyncDir(this.dir);
      return { boot, error: unread };
    } catch (err) {
      return { boot, error: err as Error };
    }
  }

  private load(text: string): void {
    const rows = text.split('\n');
    rows.forEach((row, i) => {
      if (row === '') return;
      let line: LogLine;
      try {
        line = JSON.parse(row) as LogLine;
      } catch (err) {
        if (i === rows.length - 1) return; // the last line, cut short by a crash
        throw new Error(`${this.path}: line ${i + 1} is not JSON: ${(err as Error).message}`, { cause: err });
      }
      const puts = line?.put === undefined ? [] : Array.isArray(line.put) ? line.put : [line.put];
      const removals = line?.rm === undefined ? [] : Array.isArray(line.rm) ? line.rm : [line.rm];
      if ((puts.length === 0 && removals.length === 0) || removals.some((id) => typeof id !== 'string'))
        throw new Error(`${this.path}: line ${i + 1} is neither a put nor a removal`);
      for (const h of puts) this.set(checked(h, this.path));
      for (const id of removals) this.forget(id);
    });
  }

  /**
   * Write every live handle to a fresh log and switch to it: written aside and fsynced, renamed over
   * the log, the directory fsynced (so the new name survives power loss), then opened for appends.
   */
  private compact(): void {
    const tmp = `${this.path}.tmp`;
    const hs = this.list();
    this.disk.writeFile(tmp, hs.map((h) => JSON.stringify({ put: h }) + '\n').join(''));
    this.disk.fsyncPath(tmp);
    this.disk.rename(tmp, this.path);
    // The old descriptor now writes to a file that has no name: never append through it again. Until
    // the new one is open (after the directory fsync), the next change compacts again.
    this.closeFd();
    this.disk.fsyncDir(this.dir);
    this.fd = this.disk.openAppend(this.path);
    this.written = hs.length;
    this.stale = false;
  }

  protected override persist(put: KeptHandle[], removed: string[]): void {
    if (this.closed) return; // the agent stopped
    if (this.stale || this.fd === undefined) {
      this.compact(); // the view already holds the change
      return;
    }
    try {
      this.disk.append(this.fd, logLine(put, removed));
      this.disk.fsync(this.fd);
    } catch (err) {
      this.stale = true;
      throw err;
    }
    this.written += put.length + removed.length;
    if (this.written > 1000 && this.written > 4 * this.byId.size) {
      try {
        this.compact();
      } catch {
        // The change is durable in the old log, and in the new one if the rename happened. A failure
        // before the rename leaves the old log in use (compaction is tried again on the next change);
        // one after it leaves no log open, so the next change rewrites it (and reports the error if
        // the disk still fails).
      }
    }
  }

  private closeFd(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    try {
      this.disk.close(fd);
    } catch {
      // the descriptor is released even when close reports an error; the data was fsynced before
    }
  }

  close(): void {
    this.closed = true;
    this.closeFd();
  }
}

function checked(h: unknown, where: string): KeptHandle {
  const k = h as KeptHandle;
  if (typeof k?.requestId !== 'string' || typeof k.app !== 'string' || typeof k.target !== 'string')
    throw new Error(`${where}: malformed entry`);
  return k;
}
