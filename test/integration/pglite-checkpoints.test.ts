import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import { startTestCluster, type TestCluster } from "../support/server";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

/** Checkpoints at 128 KiB of WAL here (16 MiB by default), so that a few dozen writes cross it several times. */
const WAL_BYTES = 128 * 1024;

describe("a PGlite server's WAL under writes", () => {
  let a: TestCluster;
  afterAll(() => a?.destroy());

  // PGlite's single-user backend has no checkpointer: without tern's checkpoints the WAL a start
  // after a kill -9 replays was all the WAL written since the server started.
  test("TestWalPastTheLastCheckpointStaysBoundedSoACrashedStartReplaysLittle", async () => {
    a = await startTestCluster({ store: "pglite", serverOptions: { pgliteCheckpoints: { walBytes: WAL_BYTES, intervalMs: 50 } } });
    const db = a.server.database.db;
    const bytes = async (of: ReturnType<typeof sql>) => Number((await db.execute(sql`select (${of})::bigint::text as n`) as unknown as { rows: { n: string }[] }).rows[0]!.n);
    const lsn = () => bytes(sql`pg_current_wal_lsn() - '0/0'::pg_lsn`);
    // What a start after a kill -9 now would replay.
    const pastCheckpoint = () => bytes(sql`pg_current_wal_lsn() - (select redo_lsn from pg_control_checkpoint())`);
    const client = a.client(WorkflowService);
    await client.registerNamespace({ namespace: "orders" });
    const from = await lsn();
    for (let n = 0; (await lsn()) - from < 8 * WAL_BYTES; n++) {
      // Random bytes: PostgreSQL cannot compress them, each write adds some 20 KiB of WAL.
      const input = { payloads: [{ data: crypto.getRandomValues(new Uint8Array(16 * 1024)) }] };
      await client.signalWithStartWorkflowExecution({ namespace: "orders", workflowId: `w${n % 16}`, workflowType: "t", taskQueue: "q", signalName: `s${n}`, signalInput: input });
    }
    // 8 x WAL_BYTES written: without checkpoints all of it is past the last one; what a crash now would replay is within one checkpoint's worth (and the checkpoint's own record).
    await eventually(async () => expect(await pastCheckpoint()).toBeLessThan(WAL_BYTES + 8192), { timeout: 20_000 });
  });
});
