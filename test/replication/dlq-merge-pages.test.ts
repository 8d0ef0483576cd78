import { beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import type { HistoryApplier, IncomingTask } from "../../replication/applier";
import { createReplicationDlq } from "../../replication/dlq";
import { createDlqMerge } from "../../replication/dlq-merge";
import { RAW_HISTORY_PAGE_BYTES } from "../../replication/page-transactions";
import { versionHistoryFromProto, versionHistoryToProto } from "../../replication/version-history";
import type { RemoteClientPool } from "../../src/cluster/remote-client";
import type { GetWorkflowExecutionRawHistoryRequest } from "../../src/gen/tern/admin/v1/service_pb";
import { HistoryEventSchema } from "../../src/gen/tern/common/v1/common_pb";
import type { NamespaceRecord } from "../../src/namespace/registry";
import { createLogger } from "../../src/observability/log";
import { createMetrics } from "../../src/observability/metrics";
import { clusterMetadata, namespaces, replicationDlq, type VersionHistoryItem } from "../../src/persistence/schema";
import { useTestDatabase } from "../support/server";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS_ID = "ns-pages";
const RUN = { namespaceId: NS_ID, workflowId: "paged", runId: "run-1" };
/** The task's branch (version 1 throughout) and the one the source switches to between pages (version 2 from event 3). */
const TASKS_BRANCH: VersionHistoryItem[] = [{ eventId: 8, version: 1 }];
const OTHER_BRANCH: VersionHistoryItem[] = [{ eventId: 2, version: 1 }, { eventId: 8, version: 2 }];
/** Events a page of the source holds at most: 4 MiB of them (RAW_HISTORY_PAGE_BYTES), 3 here. */
const PAGE_EVENTS = 3;

const versionAt = (branch: VersionHistoryItem[], eventId: number) => branch.find((i) => i.eventId >= eventId)!.version;

/**
 * A source whose run has two branches, the task's current at the first page asked and the other
 * one from then on (a failover or a conflict between two pages of a merge), answering a page of at
 * most PAGE_EVENTS events of the branch asked for, or of its current one.
 */
function switchingSource() {
  const asked: GetWorkflowExecutionRawHistoryRequest[] = [];
  let current = TASKS_BRANCH;
  const pool = {
    get: () => ({
      admin: {
        async getWorkflowExecutionRawHistory(req: GetWorkflowExecutionRawHistoryRequest) {
          asked.push(req);
          const wanted = req.versionHistory?.items.length ? versionHistoryFromProto(req.versionHistory.items) : current;
          const branch = JSON.stringify(wanted) === JSON.stringify(OTHER_BRANCH) ? OTHER_BRANCH : TASKS_BRANCH;
          current = OTHER_BRANCH;
          const first = Number(req.firstEventId);
          const next = Math.min(Number(req.nextEventId), first + PAGE_EVENTS);
          const events = Array.from({ length: next - first }, (_, i) =>
            create(HistoryEventSchema, { eventId: BigInt(first + i), version: BigInt(versionAt(branch, first + i)) }));
          return { events, versionHistory: versionHistoryToProto(branch) };
        },
      },
    }),
  } as unknown as RemoteClientPool;
  return { pool, asked };
}

/**
 * A DLQ merge whose run's events span more than one raw history page while the source's current
 * branch changes between the pages (DESIGN.md sections 4 and 6): the merge stays on the branch it
 * started with, the task's (kept with the entry) or, for entries stored without one, the branch
 * its first page came from, never mixing the two branches' events in one range.
 */
for (const store of await testStores()) {
  describe(`a DLQ merge across raw history pages, on ${store}`, () => {
    const opened = useTestDatabase(store);
    const log = createLogger({ write: () => {} });

    /** Merges entries for events [3, 9) of RUN, three of two events each, stored with versionHistory; returns what it applied and asked. */
    async function mergeOver(versionHistory: VersionHistoryItem[] | null) {
      const { db } = opened.database;
      await db.delete(replicationDlq);
      await db.insert(replicationDlq).values([3, 5, 7].map((first, i) => ({
        sourceCluster: "clusterA", shardId: 1, taskId: 10 + i, ...RUN, firstEventId: first, nextEventId: first + 2, version: 1, versionHistory, attempts: 3, lastError: "injected",
      })));
      const applied: IncomingTask[] = [];
      const [ns] = await db.select().from(namespaces);
      const applier = {
        namespacesOf: async () => new Map([[NS_ID, ns as NamespaceRecord]]),
        applyTask: async (_tx: unknown, _ns: unknown, t: IncomingTask) => (applied.push(t), t.events.length),
      } as unknown as HistoryApplier;
      const source = switchingSource();
      const merge = createDlqMerge({
        db, log, applier, clients: source.pool, notifier: { notify: () => {} } as never,
        dlq: createReplicationDlq({ db, metrics: createMetrics(), log }),
        writer: { transact: (_op: string, fn: (tx: never) => Promise<unknown>) => db.transaction(fn as never) } as never,
      });
      const res = await merge.merge({ sourceCluster: "clusterA" });
      return { res, applied, asked: source.asked };
    }

    beforeAll(async () => {
      const { db } = opened.database;
      await db.insert(clusterMetadata).values({
        clusterName: "clusterA", clusterId: "A", isCurrent: false, rpcAddress: "127.0.0.1:1", historyShardCount: 1,
        failoverVersionIncrement: 100, initialFailoverVersion: 1, isGlobalNamespaceEnabled: true,
      });
      await db.insert(namespaces).values({
        id: NS_ID, name: "pages", state: "REGISTERED", retentionSeconds: 3600, isGlobal: true, activeClusterName: "clusterA", clusters: ["clusterA", "clusterB"], configVersion: 1, failoverVersion: 1,
      });
    });

    test("TestAMergeOfPinnedEntriesAsksEveryPageOnTheTasksBranch", async () => {
      const { res, applied, asked } = await mergeOver(TASKS_BRANCH);
      expect(res.merged).toBe(3n);
      expect(asked.length).toBeGreaterThan(1);
      for (const req of asked) {
        expect(versionHistoryFromProto(req.versionHistory?.items)).toEqual(TASKS_BRANCH);
        expect(req.maximumPageBytes).toBe(BigInt(RAW_HISTORY_PAGE_BYTES));
      }
      expect(applied.flatMap((t) => t.events.map((e) => [Number(e.eventId), Number(e.version)]))).toEqual([3, 4, 5, 6, 7, 8].map((id) => [id, 1]));
    });

    test("TestAMergeOfEntriesWithoutABranchStaysOnItsFirstPagesBranch", async () => {
      const { res, applied, asked } = await mergeOver(null);
      expect(res.merged).toBe(3n);
      // The first page on the source's current branch (then the task's), every later one on the branch that page came from.
      expect(asked[0]!.versionHistory).toBeUndefined();
      expect(asked.length).toBeGreaterThan(1);
      for (const req of asked.slice(1)) expect(versionHistoryFromProto(req.versionHistory?.items)).toEqual(TASKS_BRANCH);
      expect(applied.flatMap((t) => t.events.map((e) => [Number(e.eventId), Number(e.version)]))).toEqual([3, 4, 5, 6, 7, 8].map((id) => [id, 1]));
      for (const t of applied) expect(t.versionHistory).toEqual(TASKS_BRANCH);
    });
  });
}
