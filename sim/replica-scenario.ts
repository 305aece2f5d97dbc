/**
 * The replica's protocol as data: a scenario file (the format of sim/scenario.ts: blocks of commands,
 * a `----` line, what they print) drives the replica's pure core (core/replica.ts) without sockets,
 * store or clock, and prints every intent the core returns, in order. `playReplicaScenario` returns
 * the file with each block's output as printed now (equal to the input when the behaviour is the one
 * written down).
 *
 * Commands (connections are c1, c2, ...; D is a duration such as 300ms or 2s):
 *   replica [hold=D] [lease=D] [heartbeat=D] [probe=D] [max-inflight=N] [max-inflight-bytes=N]
 *           [max-send=N] [max-sessions=N] [max-unauthenticated=N] [max-handles=N]
 *   accept cN [remote=ADDR] / closed cN / drain cN / buffered cN BYTES (what waits to be sent on it)
 *   hello cN NODE                                the node's hello (nonce: its name and the connection)
 *   auth cN [principals=a,b] [wrong=node|PRINCIPAL] [seal]   proofs made over the challenge seen
 *   prove cN PRINCIPAL [wrong]                   a later `prove` of one more principal on the session
 *   recv cN TYPE key=value...                    any other frame (values are JSON or bare words;
 *                                                a `data` string is its UTF-8 bytes)
 *   bad-frame cN CODE "message"                  a frame that failed to decode
 *   answer #K ok [JSON | key=value...]           store call K's result: `ok: true` and the fields
 *                                                (open, write, read, access), `true` (close), the
 *                                                JSON array (resume), `lost=[...]` (renew)
 *   answer #K no CODE "message" [key=value...]   the store's refusal (`ok: false`: LOCKED, MODIFIED, ...)
 *   answer #K unavailable "message" [maybe-applied] / throws CODE "message" / internal "message"
 *                                                the call failed: the store away, a coded error, a bug
 *   advance D                                    the clock moves; timers due fire, in order
 *   fire tN / renew-tick / reap-tick / dismount / mount / stop
 *   handles / sessions                           the core's views
 *
 * What the core asks with a `buffered` intent is answered at once with the connection's `buffered`
 * bytes (0 unless set), if they are as many as it asks to hear of, and not printed: only what that
 * answer makes the core do is.
 */
import { derive, proofs, transcript } from '../core/proofs.js';
import {
  ReplicaCore,
  type ReplicaInput,
  type ReplicaIntent,
  type StoreCall,
  type StoreFailure,
} from '../core/replica.js';
import type { Decoded } from '../transport/codec.js';
import type { Message } from '../transport/messages.js';
import { isErrorCode } from '../errors.js';
import { parseScenario, renderScenario, type Block } from './scenario.js';

const SECRET = 'scenario-cluster-key';

function ms(s: string): number {
  const m = /^(\d+)(ms|s)?$/.exec(s);
  if (!m) throw new Error(`not a duration: ${s}`);
  return Number(m[1]) * (m[2] === 's' ? 1000 : 1);
}

/** A value as the word it stands for: a list as its words joined by commas (`principals=["a","b"]` is `a,b`). */
function word(v: unknown): string {
  if (Array.isArray(v)) return v.map(word).join(',');
  return typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v);
}

/** `key=value` and bare words; a value is JSON if it parses as JSON, else the word itself. */
function parseArgs(rest: string): { pos: unknown[]; kv: Record<string, unknown> } {
  const pos: unknown[] = [];
  const kv: Record<string, unknown> = {};
  const re = /\s*(?:([A-Za-z][\w-]*)=)?("(?:[^"\\]|\\.)*"|\S+)/y;
  for (let m = re.exec(rest); m; m = re.exec(rest)) {
    let v: unknown = m[2]!;
    try {
      v = JSON.parse(m[2]!);
    } catch {
      // a bare word
    }
    if (m[1] !== undefined) kv[m[1]] = v;
    else pos.push(v);
  }
  return { pos, kv };
}

/** A value as the scenario prints it: bytes as their text, plain words bare, the rest as JSON. */
function show(v: unknown): string {
  if (v instanceof Error) return JSON.stringify(`${v.name}: ${v.message}`);
  if (v instanceof Uint8Array) return JSON.stringify(Buffer.from(v).toString('utf8'));
  if (typeof v === 'string') return /^[\w.@:/-]+$/.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v, (_k, x: unknown) => (x instanceof Uint8Array ? Buffer.from(x).toString('utf8') : x));
}

function fields(o: object, skip: string[] = []): string {
  return Object.entries(o)
    .filter(([k, v]) => v !== undefined && !skip.includes(k))
    .map(([k, v]) => (k === 'proof' ? `${k}=(hmac)` : `${k}=${show(v)}`))
    .join(' ');
}

const withBytes = (o: Record<string, unknown>) =>
  typeof o.data === 'string' ? { ...o, data: new Uint8Array(Buffer.from(o.data)) } : o;

export class ReplicaScenario {
  private core: ReplicaCore | undefined;
  private now = 0;
  private ids = 0;
  private readonly out: string[] = [];
  private readonly buffered = new Map<number, number>();
  /** Per connection: the node's name and nonce from its hello, and the replica's nonce from the challenge. */
  private readonly hs = new Map<number, { node: string; nonce: string; replicaNonce?: string }>();
  private readonly timers = new Map<number, { at: number; what: string }>();
  /** The op of each store call not yet answered. */
  private readonly calls = new Map<number, StoreCall['op']>();

  private get c(): ReplicaCore {
    if (!this.core) throw new Error('no replica yet: start with `replica`');
    return this.core;
  }

  takeOutput(): string[] {
    return this.out.splice(0);
  }

  run(line: string): void {
    const name = /^\S+/.exec(line)![0];
    const rest = line.slice(name.length);
    const { pos, kv } = parseArgs(rest);
    const conn = (i = 0) => {
      const w = String(pos[i]);
      if (!/^c\d+$/.test(w)) throw new Error(`expected a connection (c1, c2, ...), got ${w}`);
      return Number(w.slice(1));
    };
    switch (name) {
      case 'replica':
        return this.start(kv);
      case 'accept':
        return this.feed({
          type: 'accept',
          conn: conn(),
          remote: kv.remote === undefined ? '127.0.0.1' : word(kv.remote),
        });
      case 'closed':
        return this.feed({ type: 'closed', conn: conn() });
      case 'drain':
        return this.feed({ type: 'drain', conn: conn(), buffered: this.buffered.get(conn()) ?? 0 });
      case 'buffered':
        return void this.buffered.set(conn(), Number(pos[1]));
      case 'hello': {
        const node = String(pos[1]);
        const nonce = `nonce-of-${node}-c${conn()}`;
        this.hs.set(conn(), { node, nonce });
        return this.frame(conn(), { type: 'hello', v: 3, node, nonce });
      }
      case 'auth':
        return this.auth(conn(), kv, pos.includes('seal'));
      case 'prove':
        return this.prove(conn(), String(pos[1]), pos.includes('wrong'));
      case 'recv':
        return this.frame(conn(), withBytes({ type: String(pos[1]), ...kv }) as Message);
      case 'bad-frame': {
        const code = String(pos[1]);
        if (!isErrorCode(code)) throw new Error(`not an error code: ${code}`);
        return this.feed({
          type: 'frame',
          conn: conn(),
          frame: { ok: false, code, message: pos[2] === undefined ? '' : word(pos[2]) },
        });
      }
      case 'answer':
        return this.answer(pos, kv);
      case 'advance':
        return this.advance(ms(String(pos[0])));
      case 'fire': {
        const t = Number(String(pos[0]).slice(1));
        this.timers.delete(t);
        return this.feed({ type: 'timer', timer: t });
      }
      case 'renew-tick':
        return this.feed({ type: 'renew-tick' });
      case 'reap-tick':
        return this.feed({ type: 'reap-tick', buffered: this.buffered });
      case 'dismount':
      case 'mount':
      case 'stop':
        return this.feed({ type: name });
      case 'handles':
        for (const h of this.c.handles())
          this.out.push(`handle ${h.target} ${h.requestId} ${h.mode} ${h.state} session=${h.session || '-'}`);
        return;
      case 'sessions':
        for (const s of this.c.sessionList(this.now))
          this.out.push(`session ${s.id} node=${s.node} silent=${s.silentMs}ms`);
        return;
      default:
        throw new Error(`unknown command ${name}`);
    }
  }

  private start(kv: Record<string, unknown>): void {
    const d = (k: string, dflt: number) => (kv[k] === undefined ? dflt : ms(word(kv[k])));
    const n = (k: string, dflt: number) => (kv[k] === undefined ? dflt : Number(kv[k]));
    this.core = new ReplicaCore({
      id: 'replica-1',
      secret: SECRET,
      holdMs: d('hold', 5000),
      leaseMs: d('lease', 3000),
      heartbeatIntervalMs: d('heartbeat', 1000),
      helloTimeoutMs: d('hello-timeout', 5000),
      maxUnauthenticated: n('max-unauthenticated', 256),
      maxSessionsPerNode: n('max-sessions', 16),
      maxInflightPerSession: n('max-inflight', 1024),
      maxInflightBytesPerSession: n('max-inflight-bytes', 16 * 1024 * 1024),
      maxSendBufferBytes: n('max-send', 4 * 1024 * 1024),
      probeIntervalMs: d('probe', 500),
      maxHandlesPerSession: n('max-handles', 100_000),
      maxBadFrames: n('max-bad-frames', 100),
      observed: false,
      newId: () => `id${++this.ids}`,
    });
  }

  /** What the handshake on `conn` was made over: its proofs, and later `prove` frames, are over it. */
  private transcriptOf(conn: number): { node: string; t: string } {
    const hs = this.hs.get(conn);
    if (!hs?.replicaNonce) throw new Error(`c${conn} has seen no challenge`);
    return { node: hs.node, t: transcript(hs.node, hs.nonce, hs.replicaNonce, 'replica-1') };
  }

  private prove(conn: number, principal: string, wrong: boolean): void {
    const key = derive(wrong ? 'another-cluster-key' : SECRET, 'principal', principal);
    this.frame(conn, { type: 'prove', principal, proof: proofs.principal(key, principal, this.transcriptOf(conn).t) });
  }

  private auth(conn: number, kv: Record<string, unknown>, seal: boolean): void {
    const { node, t } = this.transcriptOf(conn);
    const wrong = kv.wrong === undefined ? undefined : word(kv.wrong);
    const nodeKey = derive(wrong === 'node' ? 'another-cluster-key' : SECRET, 'node', node);
    const names = kv.principals === undefined ? [] : word(kv.principals).split(',');
    const principals = names.map((p) => ({
      name: p,
      proof: proofs.principal(derive(wrong === p ? 'another-cluster-key' : SECRET, 'principal', p), p, t),
    }));
    this.frame(conn, {
      type: 'auth',
      proof: proofs.node(nodeKey, t, seal),
      principals,
      ...(seal ? { seal: true } : {}),
    });
  }

  private answer(pos: unknown[], kv: Record<string, unknown>): void {
    const call = Number(String(pos[0]).replace('#', ''));
    const op = this.calls.get(call);
    if (!op) throw new Error(`no store call #${call} waits for an answer`);
    this.calls.delete(call);
    const kind = String(pos[1]);
    if (kind === 'ok' || kind === 'no') {
      let value: unknown;
      if (kind === 'no') value = { ok: false, code: String(pos[2]), message: String(pos[3]), ...kv };
      else if (op === 'close') value = true;
      else if (op === 'resume') value = pos[2];
      else if (op === 'renew') value = { lost: kv.lost ?? [] };
      else if (op !== 'ping') value = { ok: true, ...withBytes(kv) };
      return this.feed({ type: 'store-done', call, answer: { ok: true, value } });
    }
    let failure: StoreFailure;
    if (kind === 'unavailable')
      failure = { kind, message: String(pos[2]), maybeApplied: pos.includes('maybe-applied') };
    else if (kind === 'throws') {
      const code = String(pos[2]);
      if (!isErrorCode(code)) throw new Error(`not an error code: ${code}`);
      failure = { kind: 'refused', code, message: String(pos[3]) };
    } else if (kind === 'internal') failure = { kind: 'internal', error: String(pos[2]) };
    else throw new Error(`answer ${kind}? (ok, no, unavailable, throws, internal)`);
    this.feed({ type: 'store-done', call, answer: { ok: false, failure } });
  }

  private advance(by: number): void {
    const until = this.now + by;
    for (;;) {
      let next: [number, { at: number }] | undefined;
      for (const e of this.timers) if (e[1].at <= until && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.now = next[1].at;
      this.out.push(`t${next[0]} fires`);
      this.feed({ type: 'timer', timer: next[0] });
    }
    this.now = until;
  }

  private frame(conn: number, msg: Message): void {
    const frame: Decoded = { ok: true, msg };
    this.feed({ type: 'frame', conn, frame });
  }

  private feed(input: ReplicaInput): void {
    for (const it of this.c.step(this.now, input)) this.print(it);
  }

  private print(it: ReplicaIntent): void {
    switch (it.kind) {
      case 'send': {
        if (it.msg.type === 'challenge') {
          const hs = this.hs.get(it.conn);
          if (hs) hs.replicaNonce = it.msg.nonce;
        }
        return void this.out.push(`c${it.conn} <- ${it.msg.type} ${fields(it.msg, ['type'])}`.trimEnd());
      }
      case 'buffered': {
        const bytes = this.buffered.get(it.conn) ?? 0;
        return bytes >= it.atLeast ? this.feed({ type: 'buffered', conn: it.conn, bytes }) : undefined;
      }
      case 'store':
        this.calls.set(it.call, it.what.op);
        return void this.out.push(`store #${it.call} ${storeLine(it.what)}`.trimEnd());
      case 'arm': {
        const f = it.for;
        const what =
          f.kind === 'hold'
            ? `hold ${f.handles.map((h) => `${h.target} ${h.requestId}`).join(', ')}`
            : f.kind === 'probe'
              ? 'probe'
              : `${f.kind} c${f.conn}`;
        this.timers.set(it.timer, { at: this.now + it.ms, what });
        return void this.out.push(`arm t${it.timer} ${it.ms}ms ${what}`);
      }
      case 'cancel':
        this.timers.delete(it.timer);
        return void this.out.push(`cancel t${it.timer}`);
      case 'close':
        return void this.out.push(`close c${it.conn} ${it.code} ${JSON.stringify(it.reason)}`);
      case 'protect':
        return void this.out.push(`protect c${it.conn} (session key)`);
      case 'log':
        return void this.out.push(`log ${it.level} ${JSON.stringify(it.msg)} ${fields(it.fields)}`.trimEnd());
      case 'observe':
        return void this.out.push(`observe ${fields(it)}`);
      default:
        return void this.out.push(`${it.kind} c${it.conn}`);
    }
  }
}

function storeLine(w: StoreCall): string {
  switch (w.op) {
    case 'open':
    case 'write':
    case 'read':
    case 'extents':
    case 'access':
      return `${w.op} ${fields(w.req)}`;
    case 'resume':
      return `resume ${w.reqs.map((r) => fields(r)).join(' | ')}`;
    case 'close':
      return `close ${fields(w.ref)} session=${w.session}`;
    case 'renew':
      return `renew session=${w.session} refs=${w.refs.map((r) => `${r.target}/${r.requestId}`).join(',')} leaseMs=${w.leaseMs}`;
    case 'ping':
      return 'ping';
  }
}

/** Play every block of a replica scenario; returns the scenario with each block's output as printed now. */
export function playReplicaScenario(text: string): string {
  const parts = parseScenario(text);
  const outputs = new Map<Block, string[]>();
  const d = new ReplicaScenario();
  for (const p of parts) {
    if (p.kind !== 'block') continue;
    for (const cmd of p.commands) {
      try {
        d.run(cmd);
      } catch (err) {
        d.takeOutput();
        throw new Error(`line ${p.line}: ${cmd}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
    }
    const lines = d.takeOutput();
    outputs.set(p, lines.length > 0 ? lines : ['ok']);
  }
  return renderScenario(parts, outputs);
}
