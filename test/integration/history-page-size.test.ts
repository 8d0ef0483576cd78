import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { sql } from "drizzle-orm";
import { versionHistoryToProto } from "../../replication/version-history";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { readRunEvents } from "../../src/history/execution-store";
import { pageEnd } from "../../src/history/queries";
import type { ExecutionRow } from "../../src/history/execution-store";
import { rowsOf } from "../../src/persistence/raw-statements";
import { startTestCluster, type TestCluster } from "../support/server";
import { toastBlocksFetched } from "../support/toast";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "paged";
const T = { workflowType: "T", taskQueue: "q" };

// A history page ends where its events' attributes reach a byte budget (pageEnd). Measuring
// each event by its rendered JSON read every large payload out of TOAST and rendered it, before
// the page's own read did the same: a page of 3 MiB spent 138 of its 210 ms measuring.
for (const store of await testStores()) {
  describe(`history pages on ${store}: measured from stored sizes`, () => {
    let x: TestCluster;
    let namespaceId: string;
    const runs = new Map<string, ExecutionRow>();
    beforeAll(async () => {
      x = await startTestCluster({ store });
      const wf = x.client(WorkflowService);
      await wf.registerNamespace({ namespace: NS });
      namespaceId = (await wf.describeNamespace({ namespace: NS })).namespace!.namespaceInfo!.id;
      const binary = createClient(WorkflowService, createConnectTransport({ baseUrl: x.url, useBinaryFormat: true }));
      const fill = async (workflowId: string, signals: number, data: () => Uint8Array) => {
        const { runId } = await wf.startWorkflowExecution({ namespace: NS, workflowId, ...T });
        for (let i = 0; i < signals; i++) {
          await binary.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: `s${i}`, input: { payloads: [{ metadata: {}, data: data() }] } });
        }
        runs.set(workflowId, { namespaceId, workflowId, runId, nextEventId: signals + 2 } as ExecutionRow);
      };
      // Random bytes: base64 that does not compress, stored out of line (TOAST) uncompressed.
      await fill("random", 12, () => crypto.getRandomValues(new Uint8Array(48 << 10)));
      // Zeros: 1 MiB each that the store compresses to a few KB.
      await fill("zeros", 6, () => new Uint8Array(1 << 20));
    });
    afterAll(() => x?.destroy());

    /** The event ids of each page of run's history, pages ending at budget's bytes (pageEnd's default unless given). */
    const eventIdsOfPages = async (run: ExecutionRow, budget?: number) => {
      const pages: number[][] = [];
      for (let from = 1; from < run.nextEventId; ) {
        const events = await readRunEvents(x.server.database.db, run, from, { limit: 1000, before: pageEnd(run, from, 1000, budget) });
        pages.push(events.map((e) => Number(e.eventId)));
        from += events.length;
      }
      return pages;
    };

    test("TestAPageReadsEachStoredBlockOnce: its measure reads no uncompressed event's data", async () => {
      const db = x.server.database.db;
      const run = runs.get("random")!;
      const { result: events, fetched } = await toastBlocksFetched(db, (tx) => readRunEvents(tx, run, 1, { limit: 1000, before: pageEnd(run, 1, 1000) }));
      // The whole run in one page (0.8 MB of payloads, under the 4 MiB budget).
      expect(events).toHaveLength(13);
      // The signals' blocks (the zeros' run, compressed, takes a few more of the table's): each
      // read once for the page. Measured by rendering, each was read once more: 2x.
      const stored = (rowsOf(await db.execute(sql`select sum(pg_column_size(attributes))::bigint as bytes from history_events where workflow_id = 'random'`)) as { bytes: string }[])[0]!;
      const blocksOfRun = Number(stored.bytes) / 8192;
      expect(blocksOfRun).toBeGreaterThan(50);
      expect({ blocksOfRun: Math.round(blocksOfRun), fetched, once: fetched < 1.4 * blocksOfRun }).toMatchObject({ once: true });
    });

    test("TestAPageOfCompressedPayloadsStillStopsAtWhatTheyRenderTo", async () => {
      const db = x.server.database.db;
      const compressed = (rowsOf(await db.execute(sql`select count(pg_column_compression(attributes))::int as n, max(pg_column_size(attributes))::int as stored
        from history_events where workflow_id = 'zeros' and event_id > 1`)) as { n: number; stored: number }[])[0]!;
      // Stored compressed, a few KB each: their stored size says nothing of the 1.4 MB each renders to.
      expect(compressed.n).toBe(6);
      expect(compressed.stored).toBeLessThan(100_000);
      // 1 MiB of zeros is 1.4 MB of base64: three reach the 4 MiB budget (the first event is small).
      expect(await eventIdsOfPages(runs.get("zeros")!)).toEqual([[1, 2, 3, 4], [5, 6, 7]]);
    });

    test("TestAPageOfUncompressedPayloadsStopsAtItsBudget", async () => {
      // A budget of 150 KB: 48 KiB payloads are 64 KiB of base64, so a page ends with the third
      // signal from its start, which crosses it.
      expect(await eventIdsOfPages(runs.get("random")!, 150_000)).toEqual([[1, 2, 3, 4], [5, 6, 7], [8, 9, 10], [11, 12, 13]]);
    });

    test("TestARawHistoryPageOfABranchKeptPastTheCurrentOnesEndStopsAtItsBudget", async () => {
      const db = x.server.database.db;
      // Run "kept" holds its start alone on its current branch and, kept as its branch 1 (as a
      // conflict it won would have left it), the 12 signals of "random" written at version 2.
      const { runId } = await x.client(WorkflowService).startWorkflowExecution({ namespace: NS, workflowId: "kept", ...T });
      const [start] = rowsOf(await db.execute(sql`select version::int as version from history_events where workflow_id = 'kept'`)) as { version: number }[];
      const branch = [{ eventId: 1, version: start!.version }, { eventId: 13, version: 2 }];
      await db.execute(sql`insert into history_branches (namespace_id, workflow_id, run_id, branch_id, fork_event_id, version_history)
        values (${namespaceId}, 'kept', ${runId}, 1, 1, ${JSON.stringify(branch)}::jsonb)`);
      await db.execute(sql`insert into history_branch_events (namespace_id, workflow_id, run_id, branch_id, event_id, version, event_time, event_type, attributes)
        select namespace_id, 'kept', ${runId}, 1, event_id, 2, event_time, event_type, attributes from history_events where workflow_id = 'random' and event_id > 1`);
      const admin = x.client(AdminService);
      const pages: number[][] = [];
      for (let first = 2; first < 14; ) {
        const res = await admin.getWorkflowExecutionRawHistory({
          namespaceId, workflowId: "kept", runId, firstEventId: BigInt(first), nextEventId: 14n, maximumPageBytes: 150_000n, versionHistory: versionHistoryToProto(branch),
        });
        pages.push(res.events.map((e) => Number(e.eventId)));
        expect(res.events.every((e) => e.version === 2n)).toBe(true);
        first = Number(res.events.at(-1)?.eventId ?? 13n) + 1;
      }
      // As the current branch's pages of the same events: measured only on the current branch's
      // events, everything past its end (event 1) came in one answer of 0.8 MB.
      expect(pages).toEqual([[2, 3, 4], [5, 6, 7], [8, 9, 10], [11, 12, 13]]);
    });
  });
}
