import type { ServiceImpl } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BackfillService } from "../gen/tern/admin/v1/backfill_pb";
import type { NamespaceRegistry } from "../namespace/registry";
import type { Db } from "../persistence/database";
import { backfillJobsOf } from "../../replication/backfill-jobs";
import { listExecutionsForReplication } from "../../replication/backfill-sender";

export interface BackfillHandlerDeps {
  db: Db;
  namespaces: NamespaceRegistry;
}

/** BackfillService: the source's run listing and the receiver's job status; logic in replication/backfill-*. */
export function createBackfillHandler({ db, namespaces }: BackfillHandlerDeps): ServiceImpl<typeof BackfillService> {
  return {
    listExecutionsForReplication: (r) => listExecutionsForReplication(db, r),
    async getBackfillStatus(r) {
      const ns = await namespaces.describe({ name: r.namespace });
      const jobs = await backfillJobsOf(db, ns.id);
      return {
        namespace: ns.name,
        namespaceId: ns.id,
        jobs: jobs.map((j) => ({
          sourceCluster: j.sourceCluster,
          status: j.status,
          done: BigInt(j.done),
          total: BigInt(j.total),
          lastError: j.lastError ?? "",
          startedTime: timestampFromDate(j.startedAt),
          updatedTime: timestampFromDate(j.updatedAt),
        })),
      };
    },
  };
}
