import type { ServiceImpl } from "@connectrpc/connect";
import { AdminService } from "../gen/tern/admin/v1/service_pb";
import type { CurrentCluster } from "../cluster/bootstrap";
import type { Db } from "../persistence/database";
import { listHistoryBranches } from "../../replication/branches";
import { readRawHistory } from "../../replication/raw-history";
import type { ReplicationSender } from "../../replication/sender";
import type { ReplicationStatus } from "../../replication/status";
import type { NamespaceSender } from "../../replication/namespace-sender";
import type { ReplicationDlq } from "../../replication/dlq";
import type { DlqMerge } from "../../replication/dlq-merge";
import type { ReplicationVerifier } from "../../replication/verification";

export interface AdminHandlerDeps {
  db: Db;
  cluster: CurrentCluster;
  /** History replication tasks for pulling peers. */
  sender: ReplicationSender;
  status: ReplicationStatus;
  /** Namespace replication tasks for pulling peers. */
  namespaceSender: NamespaceSender;
  dlq: ReplicationDlq;
  dlqMerge: DlqMerge;
  verifier: ReplicationVerifier;
}

/** AdminService: replication internals for peers and operators; the logic lives in replication/. */
export function createAdminHandler({ db, sender, status, namespaceSender, dlq, dlqMerge, verifier }: AdminHandlerDeps): ServiceImpl<typeof AdminService> {
  return {
    getReplicationTasks: (r, ctx) => sender.getReplicationTasks(r, ctx.signal),
    pullReplicationTasks: (r, ctx) => sender.pullReplicationTasks(r, ctx.signal),
    streamReplicationTasks: (r, ctx) => sender.streamReplicationTasks(r, ctx.signal),
    ackReplicationTasks: (r) => sender.ackReplicationTasks(r),
    getNamespaceReplicationTasks: (r, ctx) => namespaceSender.getTasks(r, ctx.signal),
    getWorkflowExecutionRawHistory: (r) => readRawHistory(db, r),
    getReplicationStatus: () => status.get(),
    listReplicationDlq: (r) => dlq.list(r),
    mergeReplicationDlq: (r, ctx) => dlqMerge.merge(r, ctx.signal),
    purgeReplicationDlq: async (r, ctx) => ({ purged: BigInt(await dlq.purge(r, ctx.signal)) }),
    getExecutionChecksums: (r, ctx) => verifier.checksums(r, ctx.signal),
    verifyReplication: (r, ctx) => verifier.verify(r, ctx.signal),
    listHistoryBranches: (r) => listHistoryBranches(db, r),
  };
}
