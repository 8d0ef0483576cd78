import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { sql } from "drizzle-orm";
import { createReplicationVerifier } from "../../replication/verification";
import { renderedBytesBound } from "../../replication/run-digest";
import { createRemoteClientPool } from "../../src/cluster/remote-client";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import type { Db } from "../../src/persistence/database";
import { rowsOf } from "../../src/persistence/raw-statements";
import { historyEvents as h } from "../../src/persistence/schema";
import { json } from "../support/payload";
import { startTestCluster, type TestCluster } from "../support/server";
import { historyToast, toastBlocksFetched } from "../support/toast";
import { testStores } from "../support/stores";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const NS = "sized";
const T = { workflowType: "T", taskQueue: "q" };

for (const store of await testStores()) {
  describe(`verify on ${store}: which runs are digested in pages, chosen from stored sizes`, () => {
    let x: TestCluster;
    let namespaceId: string;
    beforeAll(async () => {
      x = await startTestCluster({ store });
      const wf = x.client(WorkflowService);
      await wf.registerNamespace({ namespace: NS });
      namespaceId = (await wf.describeNamespace({ namespace: NS })).namespace!.namespaceInfo!.id;
      const binary = createClient(WorkflowService, createConnectTransport({ baseUrl: x.url, useBinaryFormat: true }));
      // Random bytes: base64 that does not compress, stored out of line (TOAST) uncompressed.
      await wf.startWorkflowExecution({ namespace: NS, workflowId: "bulky", ...T });
      for (let i = 0; i < 12; i++) {
        const data = crypto.getRandomValues(new Uint8Array(48 << 10));
        await binary.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "bulky" }, signalName: `s${i}`, input: { payloads: [{ metadata: {}, data }] } });
      }
      // Control characters render six times their stored size (\u0001); many of them compress well.
      for (const [workflowId, n] of [["escaped", 1500], ["escaped-compressed", 200_000]] as const) {
        await wf.startWorkflowExecution({ namespace: NS, workflowId, ...T, input: json({ n }) });
        await wf.terminateWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, reason: "\u0001".repeat(n) });
      }
    });
    afterAll(() => x?.destroy());

    test("TestChecksumsReadEachEventOnce: choosing SQL or pages reads no event's stored text", async () => {
      const db = x.server.database.db;
      const { blocks } = await historyToast(db);
      expect(blocks).toBeGreaterThan(50); // the signals' events, out of line
      const { fetched } = await toastBlocksFetched(db, (tx) =>
        createReplicationVerifier({ db: tx as unknown as Db, cluster: x.server.cluster, clients: createRemoteClientPool() })
          .checksums({ namespace: NS, pageSize: 10, nextPageToken: new Uint8Array(0) }));
      // Each stored block read once, for the digest, not once more to size the run.
      // (A block holds several events' chunks, and a block is counted again when a run's read
      // comes back to it: a few more than the blocks.)
      expect({ blocks, fetched, once: fetched >= blocks && fetched < 1.5 * blocks }).toMatchObject({ once: true });
    });

    test("TestSizeBoundIsNeverBelowTheRenderedText: escaped and compressed attributes", async () => {
      const rows = rowsOf(await x.server.database.db.execute(sql`
        select ${h.workflowId} as w, ${renderedBytesBound} as bound, sum(octet_length(${h.attributes}::text))::bigint as rendered,
          count(pg_column_compression(${h.attributes}))::int as compressed
        from ${h} where ${h.namespaceId} = ${namespaceId} group by ${h.workflowId} order by 1`)) as { w: string; bound: string; rendered: string; compressed: number }[];
      expect(rows.map((r) => r.w)).toEqual(["bulky", "escaped", "escaped-compressed"]);
      for (const r of rows) expect(Number(r.bound)).toBeGreaterThanOrEqual(Number(r.rendered));
      // The compressed run's events were stored compressed (or the bound had no compression to cover).
      expect(rows.find((r) => r.w === "escaped-compressed")!.compressed).toBe(1);
      expect(rows.find((r) => r.w === "escaped")!.compressed).toBe(0);
    });
  });
}
