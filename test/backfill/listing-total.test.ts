import { create } from "@bufbuild/protobuf";
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { and, eq } from "drizzle-orm";
import { recordBackfillPage, startBackfillJob } from "../../replication/backfill-jobs";
import { listExecutionsForReplication } from "../../replication/backfill-sender";
import { ListExecutionsForReplicationRequestSchema } from "../../src/gen/tern/admin/v1/backfill_pb";
import { insertExecution } from "../../src/history/execution-store";
import { backfillJobs } from "../../src/persistence/schema";
import { useTestDatabase } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

const NS = "ns-listing";
const run = (i: number) => ({
  namespaceId: NS, workflowId: `wf-${i}`, runId: `run-${i}`, shardId: 1, workflowType: "T", taskQueue: "q", status: "RUNNING",
  startTime: new Date(Date.UTC(2026, 0, 1)), nextEventId: 2, lastWriteVersion: 1, versionHistory: [{ eventId: 1, version: 1 }],
});

for (const store of await testStores()) {
  describe(`backfill listing totals on ${store}`, () => {
    const opened = useTestDatabase(store);

    test("ListingCountsTheRunsOnceAndTheJobKeepsIt: the first page says how many runs there are, later pages 0, and the job's total stays", async () => {
      const { db } = opened.database;
      await db.transaction((tx) => Promise.all([1, 2, 3, 4, 5].map((i) => insertExecution(tx, run(i)))));
      const list = (nextPageToken: Uint8Array) =>
        listExecutionsForReplication(db, create(ListExecutionsForReplicationRequestSchema, { namespaceId: NS, pageSize: 2, nextPageToken }));
      const first = await list(new Uint8Array());
      const second = await list(first.nextPageToken);
      const third = await list(second.nextPageToken);
      expect([first, second, third].map((p) => [p.executions.map((e) => e.workflowId), p.total])).toEqual([
        [["wf-1", "wf-2"], 5n], [["wf-3", "wf-4"], 0n], [["wf-5"], 0n],
      ]);
      expect(third.nextPageToken.length).toBe(0);

      // The receiver's job, recording those pages as it does (backfill-receiver.ts).
      const key = { namespaceId: NS, sourceCluster: "clusterA" };
      await db.transaction((tx) => startBackfillJob(tx, key, new Date()));
      let [job] = await db.select().from(backfillJobs).where(and(eq(backfillJobs.namespaceId, NS), eq(backfillJobs.sourceCluster, "clusterA")));
      const totals: number[] = [];
      for (const page of [first, second, third]) {
        const last = page.executions.at(-1)!;
        job = await recordBackfillPage(db, job!, {
          cursor: { workflowId: last.workflowId, runId: last.runId }, applied: page.executions.length, total: Number(page.total), finished: page.nextPageToken.length === 0,
        }, new Date());
        totals.push(job!.total);
      }
      expect(totals).toEqual([5, 5, 5]);
      expect([job!.status, job!.done]).toEqual(["DONE", 5]);
    });
  });
}
