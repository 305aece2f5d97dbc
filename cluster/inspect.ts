/**
 * Inspection of a child process's actors: XState inspection events go to the launcher through
 * @statelyai/inspect's WebSocket inspector, only while somebody watches (the launcher says so), with
 * bytes and long strings cut down before they leave the process. Actor registrations always go, so a
 * browser that arrives later still knows every actor and its machine.
 */
import { createWebSocketInspector } from '@statelyai/inspect';
import type { ActorRefLike, InspectionEvent } from "xstate";

function sanitize(value: unknown, depth = 0): unknown {
  if (value instanceof Uint8Array) return `<${value.length} bytes>`;
  if (typeof value === 'string') return value.length > 200 ? `${value.slice(0, 200)}…` : value;
  if (typeof value === 'function') return undefined;
  if (value === null || typeof value !== 'object' || depth > 4) return typeof value === 'object' && value !== null ? '…' : value;
  if (Array.isArray(value)) return value.slice(0, 20).map((v) => sanitize(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = sanitize(v, depth + 1);
  return out;
}

export interface ProcessInspector {
  inspect: (ev: InspectionEvent) => void;
  watch(on: boolean): void;
  stop(): void;
}

export function processInspector(url: string): ProcessInspector {
  const inspector = createWebSocketInspector({
    url,
    sanitizeEvent: (e) => sanitize(e) as typeof e,
    sanitizeContext: (c) => sanitize(c) as typeof c,
    maxDeferredEvents: 500,
  });
  let watching = false;
  const live = new Set<ActorRefLike>();
  return {
    inspect: (ev) => {
      if (ev.type === '@xstate.actor') {
        live.add(ev.actorRef);
        inspector.inspect.next?.(ev);
        return;
      }
      if (!watching) return;
      if (ev.type === '@xstate.snapshot' && (ev.snapshot as { status?: string }).status !== 'active') live.delete(ev.actorRef);
      if (ev.type === '@xstate.snapshot' || ev.type === '@xstate.event') inspector.inspect.next?.(ev);
    },
    watch(on) {
      if (on && !watching) {
        // Somebody started watching: tell them where every actor is now.
        for (const ref of live) {
          const snapshot = ref.getSnapshot() as { status?: string };
          if (snapshot.status !== 'active') {
            live.delete(ref);
            continue;
          }
          inspector.inspect.next?.({ type: '@xstate.snapshot', actorRef: ref, rootId: ref.sessionId, snapshot, event: { type: 'xstate.resync' } } as unknown as InspectionEvent);
        }
      }
      watching = on;
    },
    stop: () => inspector.stop(),
  };
}
