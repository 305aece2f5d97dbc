import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import type { Application, Handle, HandleState } from '../actors/application.js';
import { LocalCluster, type LocalClusterOptions } from '../cluster/local.js';
import { SafeResumeError } from '../errors.js';
import { nanoid } from 'nanoid';
import { issueCredential } from '../actors/auth.js';
import { bareLogin } from '../actors/handshake.js';

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'safe-resume-test-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Poll until `check` returns true (or throw with `what` after `timeoutMs`). */
export async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Resolve once the handle reaches `state`, recording every state it passes through. */
export function waitForState(h: Handle, state: HandleState, timeoutMs = 10_000): Promise<void> {
  return waitFor(`${h.target} to be ${state} (is ${h.state})`, () => h.state === state, timeoutMs);
}

export function trace(h: Handle): HandleState[] {
  const seen: HandleState[] = [h.state];
  h.on('state', (s) => seen.push(s));
  return seen;
}

export const bytes = (s: string) => new TextEncoder().encode(s);
export const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** Cluster timings short enough for tests: 100 ms heartbeats, a 400 ms hold period. */
export const FAST: Omit<LocalClusterOptions, 'dir'> = {
  replicas: 2,
  replica: { holdMs: 400, heartbeatIntervalMs: 100, leaseMs: 300, probeIntervalMs: 50 },
  node: { heartbeatIntervalMs: 100, backoffBaseMs: 20, backoffMaxMs: 200 },
};

/**
 * Register an afterEach that stops every cluster a test started; returns the function that starts
 * one (FAST timings, a fresh data directory, overridable).
 */
export function clusters(
  defaults: Partial<LocalClusterOptions> = {},
): (opts?: Partial<LocalClusterOptions>) => Promise<LocalCluster> {
  let cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.reverse()) await c();
    cleanups = [];
  });
  return async (opts = {}) => {
    const t = tempDir();
    const c = await LocalCluster.start({ dir: t.dir, ...FAST, ...defaults, ...opts });
    cleanups.push(t.cleanup, () => c.stop());
    return c;
  };
}

/** Open for writing, retrying while another writer's lock is live. */
export async function openWhenFree(app: Application, target: string): Promise<Handle> {
  for (let i = 0; ; i++) {
    try {
      return await app.open(target);
    } catch (err) {
      if (!(err instanceof SafeResumeError) || err.code !== 'LOCKED' || i > 300) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Resolve once a trace (from `trace(h)`) has passed through `state`, however briefly. */
export function reached(states: HandleState[], state: HandleState, timeoutMs = 10_000): Promise<void> {
  return waitFor(
    `a handle to pass through ${state} (went ${states.join(' -> ')})`,
    () => states.includes(state),
    timeoutMs,
  );
}

/** A bare client's handshake as node `node` speaking for `principals`, from the cluster key. */
export function loginAs(secret: string, node: string, principals: string[] = ['p']) {
  return bareLogin(
    issueCredential(secret, 'node', node),
    principals.map((p) => issueCredential(secret, 'principal', p)),
    nanoid(),
  );
}
