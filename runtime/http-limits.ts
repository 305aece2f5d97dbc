/**
 * What every local HTTP endpoint (the control endpoint, the inspector, /metrics) allows a client
 * before its request is whole, and how many connections it holds at once. Node checks
 * `headersTimeout` and `requestTimeout` only every `connectionsCheckingInterval` (30 s by default), so
 * that interval is short here; past `MAX_HTTP_CONNECTIONS` a new connection is closed at once.
 */
import type { Server } from 'node:http';

export const HTTP_TIMEOUTS = {
  headersTimeout: 5_000,
  requestTimeout: 10_000,
  connectionsCheckingInterval: 500,
} as const;

/** Connections one endpoint holds at once (a browser's page and its stream take a few each). */
export const MAX_HTTP_CONNECTIONS = 128;

/** `server`, holding at most MAX_HTTP_CONNECTIONS connections. */
export function capConnections<S extends Server>(server: S): S {
  server.maxConnections = MAX_HTTP_CONNECTIONS;
  return server;
}
