import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Handle, HandleState } from '../actors/application.js';

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
