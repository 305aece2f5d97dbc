/**
 * The node agent's durable node-local record of each application's open handles and their
 * requestIds, so a restarted agent (or application) can still resume them.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

export interface KeptHandle {
  app: string;
  target: string;
  requestId: string;
  principal: string;
  mode: 'read' | 'write';
  /** Read handles: the target version seen at open (conservative: later reads are not recorded). */
  version: number;
  /** Write handles: the sessions the grant was last held through (see ResumeItem.sessions). */
  sessions?: string[];
}

export interface KeptIds {
  list(): KeptHandle[];
  find(app: string, target: string): KeptHandle | undefined;
  put(h: KeptHandle): void;
  remove(requestId: string): void;
  /** Put several at once (one write of the file). */
  putMany(hs: KeptHandle[]): void;
}

export class MemoryKeptIds implements KeptIds {
  protected readonly byId = new Map<string, KeptHandle>();
  list(): KeptHandle[] {
    return [...this.byId.values()];
  }
  find(app: string, target: string): KeptHandle | undefined {
    for (const h of this.byId.values()) if (h.app === app && h.target === target) return h;
    return undefined;
  }
  put(h: KeptHandle): void {
    this.byId.set(h.requestId, { ...h });
    this.persist();
  }
  remove(requestId: string): void {
    if (this.byId.delete(requestId)) this.persist();
  }
  putMany(hs: KeptHandle[]): void {
    if (hs.length === 0) return;
    for (const h of hs) this.byId.set(h.requestId, { ...h });
    this.persist();
  }
  protected persist(): void {}
}

/** A JSON file, replaced atomically (write to a temporary file, then rename) on every change. */
export class FileKeptIds extends MemoryKeptIds {
  readonly path: string;
  constructor(dir: string, nodeId: string) {
    super();
    mkdirSync(dir, { recursive: true });
    this.path = join(dir, `${nodeId}.handles.json`);
    if (existsSync(this.path)) {
      const parsed: unknown = JSON.parse(readFileSync(this.path, 'utf8'));
      if (!Array.isArray(parsed)) throw new Error(`${this.path}: expected a JSON array of handles`);
      for (const h of parsed as KeptHandle[]) {
        if (typeof h?.requestId !== 'string' || typeof h.app !== 'string' || typeof h.target !== 'string') throw new Error(`${this.path}: malformed entry`);
        this.byId.set(h.requestId, h);
      }
    }
  }
  protected override persist(): void {
    const tmp = `${this.path}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.list(), null, 1));
    renameSync(tmp, this.path);
  }
}
