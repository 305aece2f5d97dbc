/**
 * The node agent's durable node-local record of each application's open handles and their
 * requestIds, so a restarted agent (or application) can still resume them.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export interface KeptHandle {
  app: string;
  target: string;
  requestId: string;
  principal: string;
  mode: 'read' | 'write';
  /** Read handles: the target version seen at open (conservative: later reads are not recorded). */
  version: number;
  /** Write handles: the handle instance (see ResumeItem.instance). Entries from before instances have none. */
  instance?: string;
}

export interface KeptIds {
  list(): KeptHandle[];
  find(app: string, target: string): KeptHandle | undefined;
  put(h: KeptHandle): void;
  remove(requestId: string): void;
  /** Put several at once (one write of the file). */
  putMany(hs: KeptHandle[]): void;
  /** Let go of the file (what is kept stays on disk). */
  close?(): void;
}

export class MemoryKeptIds implements KeptIds {
  protected readonly byId = new Map<string, KeptHandle>();
  /** `app NUL target` -> requestId, so finding an application's handle does not scan them all. */
  private readonly byName = new Map<string, string>();
  list(): KeptHandle[] {
    return [...this.byId.values()];
  }
  find(app: string, target: string): KeptHandle | undefined {
    const id = this.byName.get(`${app}\0${target}`);
    return id === undefined ? undefined : this.byId.get(id);
  }
  put(h: KeptHandle): void {
    this.putMany([h]);
  }
  remove(requestId: string): void {
    if (this.forget(requestId)) this.persist([], [requestId]);
  }
  putMany(hs: KeptHandle[]): void {
    if (hs.length === 0) return;
    for (const h of hs) this.set({ ...h });
    this.persist(hs, []);
  }
  protected set(h: KeptHandle): void {
    const old = this.byId.get(h.requestId);
    if (old) this.byName.delete(`${old.app}\0${old.target}`);
    this.byId.set(h.requestId, h);
    this.byName.set(`${h.app}\0${h.target}`, h.requestId);
  }
  protected forget(requestId: string): boolean {
    const old = this.byId.get(requestId);
    if (!old) return false;
    this.byId.delete(requestId);
    if (this.byName.get(`${old.app}\0${old.target}`) === requestId) this.byName.delete(`${old.app}\0${old.target}`);
    return true;
  }
  protected persist(_put: KeptHandle[], _removed: string[]): void {}
}

type LogLine = { put: KeptHandle } | { rm: string };

/**
 * A log of JSON lines, one per change, appended (so a change costs one small write however many
 * handles are kept) and compacted into a fresh file (written aside, then renamed over) when most of
 * it is stale. A line cut short by a crash is ignored on load: that change never completed.
 */
export class FileKeptIds extends MemoryKeptIds {
  readonly path: string;
  private fd: number;
  private lines = 0;

  constructor(dir: string, nodeId: string) {
    super();
    mkdirSync(dir, { recursive: true });
    this.path = join(dir, `${nodeId}.handles.jsonl`);
    // The earlier format: one JSON array, rewritten on every change; read once, then removed.
    const legacy = join(dir, `${nodeId}.handles.json`);
    if (existsSync(this.path)) this.load(readFileSync(this.path, 'utf8'));
    else if (existsSync(legacy)) {
      const parsed: unknown = JSON.parse(readFileSync(legacy, 'utf8'));
      if (!Array.isArray(parsed)) throw new Error(`${legacy}: expected a JSON array of handles`);
      for (const h of parsed) this.set(checked(h, legacy));
    }
    this.fd = this.compact();
    rmSync(legacy, { force: true });
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
        throw new Error(`${this.path}: line ${i + 1} is not JSON: ${(err as Error).message}`);
      }
      if ('rm' in line && typeof line.rm === 'string') this.forget(line.rm);
      else if ('put' in line) this.set(checked(line.put, this.path));
      else throw new Error(`${this.path}: line ${i + 1} is neither a put nor a removal`);
    });
  }

  /** Write every live handle to a fresh log and switch to it; returns its descriptor. */
  private compact(): number {
    const tmp = `${this.path}.tmp`;
    const hs = this.list();
    writeFileSync(tmp, hs.map((h) => JSON.stringify({ put: h }) + '\n').join(''));
    renameSync(tmp, this.path);
    if (this.fd !== undefined && this.fd >= 0) closeSync(this.fd);
    this.lines = hs.length;
    return openSync(this.path, 'a');
  }

  protected override persist(put: KeptHandle[], removed: string[]): void {
    if (this.fd < 0) return; // closed: the agent stopped
    let out = '';
    for (const h of put) out += JSON.stringify({ put: h }) + '\n';
    for (const id of removed) out += JSON.stringify({ rm: id }) + '\n';
    writeSync(this.fd, out);
    this.lines += put.length + removed.length;
    if (this.lines > 1000 && this.lines > 4 * this.byId.size) this.fd = this.compact();
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

function checked(h: unknown, where: string): KeptHandle {
  const k = h as KeptHandle;
  if (typeof k?.requestId !== 'string' || typeof k.app !== 'string' || typeof k.target !== 'string') throw new Error(`${where}: malformed entry`);
  return k;
}
