import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { createReplicationVerifier } from "../../replication/verification";
import { createRemoteClientPool } from "../../src/cluster/remote-client";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { json } from "../support/payload";
import { startTestCluster, type TestCluster } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(300_000);

const NS = "bulky";
const MiB = 1 << 20;
/** Fourteen signals of 60 MiB: their attributes render to 1.17 GB of text, past a PostgreSQL value's 1 GB. */
const SIGNALS = 14;
const SIGNAL_BYTES = 60 * MiB;
const T = { workflowType: "T", taskQueue: "q" };

// PostgreSQL only: the limit is PostgreSQL's, and a gigabyte through PGlite's WebAssembly heap proves nothing more.
for (const store of (await testStores()).filter((s) => s === "postgres")) {
  describe(`verify on ${store}: a run of more than 1 GB of events`, () => {
    let x: TestCluster;
    let namespaceId: string;
    let bigRunId: string;
    let smallRunId: string;

    beforeAll(async () => {
      x = await startTestCluster({ store, extraYaml: `limits: { blobSizeLimitError: ${SIGNAL_BYTES + MiB}, blobSizeLimitWarn: ${SIGNAL_BYTES + MiB} }` });
      const wf = x.client(WorkflowService);
      await wf.registerNamespace({ namespace: NS });
      namespaceId = (await wf.describeNamespace({ namespace: NS })).namespace!.namespaceInfo!.id;
      smallRunId = (await wf.startWorkflowExecution({ namespace: NS, workflowId: "small", ...T })).runId;
      for (let i = 0; i < 3; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "small" }, signalName: `s${i}`, input: json({ i, text: "ünïcode ✓" }) });
      bigRunId = (await wf.startWorkflowExecution({ namespace: NS, workflowId: "big", ...T })).runId;
      const input = json("x".repeat(SIGNAL_BYTES - 16));
      // Binary, not JSON: 60 MiB a request rather than 80 MiB of base64 to encode and decode.
      const binary = createClient(WorkflowService, createConnectTransport({ baseUrl: x.url, useBinaryFormat: true }));
      for (let i = 0; i < SIGNALS; i++) await binary.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "big" }, signalName: `part-${i}`, input });
    });
    afterAll(async () => {
      await x?.destroy();
    });

    test("TestChecksumsOfARunPastOneGigabyte: every run gets its checksum, the large one's computed in pages", async () => {
      const res = await x.client(AdminService).getExecutionChecksums({ namespace: NS });
      const byWorkflow = new Map(res.executions.map((e) => [e.workflowId, e]));
      expect(byWorkflow.get("big")).toMatchObject({ runId: bigRunId, eventCount: BigInt(SIGNALS + 1) });
      expect(byWorkflow.get("big")!.checksum).toMatch(/^[0-9a-f]{32}$/);
      expect(byWorkflow.get("small")).toMatchObject({ runId: smallRunId, eventCount: 4n });
    });

    test("TestPagedDigestEqualsTheSqlOne: a peer that digests in SQL agrees, for whole runs and prefixes", async () => {
      const deps = { db: x.server.database.db, cluster: x.server.cluster, clients: createRemoteClientPool() };
      const inSql = createReplicationVerifier(deps);
      const inPages = createReplicationVerifier({ ...deps, sqlDigestBytes: 0 });
      const small = { namespace: NS, pageSize: 0, nextPageToken: new Uint8Array(0), prefixes: [{ workflowId: "small", runId: smallRunId, eventCount: 4n }] };
      const prefixes = { ...small, prefixes: [...small.prefixes, { workflowId: "big", runId: bigRunId, eventCount: 1n }] };
      const [a, b] = await Promise.all([inSql.checksums(prefixes), inPages.checksums(prefixes)]);
      const rows = (r: typeof a) => r.executions.map((e) => `${e.workflowId}/${e.eventCount}/${e.checksum}`).sort();
      expect(rows(b)).toEqual(rows(a));
      expect(rows(a)).toHaveLength(2);
    });
  });
}
