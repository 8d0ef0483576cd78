import type { ServiceImpl } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { and, asc, eq, gt, gte, lt } from "drizzle-orm";
import { AdminService } from "../gen/tern/admin/v1/service_pb";
import { eventFromRow } from "../history/events";
import { invalidArgument } from "../errors";
import type { CurrentCluster } from "../cluster/bootstrap";
import type { Db } from "../persistence/database";
import { historyEvents, replicationTasks, shards } from "../persistence/schema";

/** AdminService: replication internals for peers and operators. */
export function createAdminHandler({ db, cluster }: { db: Db; cluster: CurrentCluster }): ServiceImpl<typeof AdminService> {
  return {
    async getReplicationTasks(r) {
      if (r.shardId < 1 || r.shardId > cluster.historyShardCount) {
        throw invalidArgument(`shard id must be 1..${cluster.historyShardCount}`);
      }
      const size = r.pageSize > 0 ? Math.min(r.pageSize, 1000) : 100;
      const rows = await db
        .select()
        .from(replicationTasks)
        .where(and(eq(replicationTasks.shardId, r.shardId), gt(replicationTasks.taskId, Number(r.afterTaskId))))
        .orderBy(asc(replicationTasks.taskId))
        .limit(size);
      const [shard] = await db.select().from(shards).where(eq(shards.shardId, r.shardId));
      const tasks = [];
      for (const t of rows) {
        const events = r.includeEvents
          ? (
              await db
                .select()
                .from(historyEvents)
                .where(
                  and(
                    eq(historyEvents.namespaceId, t.namespaceId),
                    eq(historyEvents.workflowId, t.workflowId),
                    eq(historyEvents.runId, t.runId),
                    gte(historyEvents.eventId, t.firstEventId),
                    lt(historyEvents.eventId, t.nextEventId),
                  ),
                )
                .orderBy(asc(historyEvents.eventId))
            ).map(eventFromRow)
          : [];
        tasks.push({
          shardId: t.shardId,
          taskId: BigInt(t.taskId),
          namespaceId: t.namespaceId,
          workflowId: t.workflowId,
          runId: t.runId,
          firstEventId: BigInt(t.firstEventId),
          nextEventId: BigInt(t.nextEventId),
          version: BigInt(t.version),
          versionHistory: { items: t.versionHistory.map((i) => ({ eventId: BigInt(i.eventId), version: BigInt(i.version) })) },
          createTime: timestampFromDate(t.createdAt),
          events,
        });
      }
      return { tasks, maxTaskId: BigInt((shard?.nextTaskId ?? 1) - 1) };
    },
  };
}
