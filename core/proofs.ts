/**
 * The handshake's proofs (the scheme is described in actors/auth.ts): pure functions of keys and
 * text, used by the replica's core to check a node's and its principals' proofs and by a node agent
 * to make them. Nothing here touches a file or the network.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** A key derived from the cluster key for one node or principal. */
export function derive(clusterKey: string, kind: 'node' | 'principal', name: string): Buffer {
  return createHmac('sha256', clusterKey).update(`safe-resume/v1/${kind}/${name}`).digest();
}

/** The text both ends of one session's handshake sign: names and both nonces. */
export function transcript(node: string, agentNonce: string, replicaNonce: string, replica: string): string {
  return `safe-resume/v3|${node}|${agentNonce}|${replicaNonce}|${replica}`;
}

function mac(key: Buffer, text: string): string {
  return createHmac('sha256', key).update(text).digest('base64url');
}

/** Proofs made by whoever holds the key: a node agent (its credential) or a replica (the cluster key). */
export const proofs = {
  replica: (nodeKey: Buffer, t: string) => mac(nodeKey, `replica|${t}`),
  node: (nodeKey: Buffer, t: string, seal = false) => mac(nodeKey, seal ? `node|${t}|seal` : `node|${t}`),
  principal: (principalKey: Buffer, principal: string, t: string) => mac(principalKey, `principal|${principal}|${t}`),
};

/** The key that seals a session's frames (transport/frame-mac.ts). */
export function sessionKey(nodeKey: Buffer, t: string): Buffer {
  return createHmac('sha256', nodeKey).update(`frames|${t}`).digest();
}

/** Constant-time comparison of two proofs. */
export function proofMatches(expected: string, given: string): boolean {
  const a = Buffer.from(expected);
  const b = Buffer.from(given);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The storage side's view: every node's and principal's key, derived from the cluster key on demand. */
export class Keyring {
  constructor(private readonly clusterKey: string) {}

  node(name: string): Buffer {
    return derive(this.clusterKey, 'node', name);
  }

  principal(name: string): Buffer {
    return derive(this.clusterKey, 'principal', name);
  }
}
