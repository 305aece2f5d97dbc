/**
 * What the simulated world and its workload share: a simulated application process (`Proc`), how
 * one is spawned, the slots its writes fill, and what the workload uses of the world (`WorkloadWorld`,
 * which World is).
 */
import type { Application, Handle } from '../actors/application.js';
import type { NodeAgent } from '../actors/node-agent.js';
import type { Recorder } from './history.js';

export interface Proc {
  id: string;
  app: string;
  node: string;
  target: string;
  application: Application;
  handle: Handle | undefined;
  crashed: boolean;
  stopped: boolean;
  k: number;
  mode: 'read' | 'write';
}

export interface SpawnOptions {
  requestId?: string;
  /** One write, then close (a short-lived writer). */
  once?: boolean;
  mode?: 'read';
}

export const SLOT_BYTES = 32;
export const SLOTS = 8;

/** What the workload uses of the world its processes run in. */
export interface WorkloadWorld {
  readonly agents: ReadonlyMap<string, NodeAgent | undefined>;
  readonly history: Recorder;
  readonly opts: { readonly thinkMs?: [number, number] | undefined };
  readonly random: () => number;
  /** The world is shutting down: processes stop. */
  readonly stopping: boolean;
  /** Every fault has healed: applications slow down while their handles settle. */
  readonly calm: boolean;
  newApplication(agent: NodeAgent, name: string, node: string): Application;
  sleep(ms: number): Promise<void>;
  between(lo: number, hi: number): number;
}
