/** etcd members for tests (runtime/etcd-members.ts), each cluster in a temporary directory of its own. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdMembers } from '../runtime/etcd-members.js';

export interface EtcdCluster {
  endpoints: string[];
  members: EtcdMembers;
  stop(): Promise<void>;
}

/** Start `n` members as one cluster and wait until it answers; a missing etcd fails with the package to install. */
export async function startEtcd(n = 1): Promise<EtcdCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'safe-resume-etcd-'));
  const members = await EtcdMembers.start(dir, n);
  return {
    endpoints: members.endpoints,
    members,
    stop: async () => {
      await members.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
