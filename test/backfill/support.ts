import { expect } from "bun:test";
import { createConnectTransport } from "@connectrpc/connect-web";
import { sql } from "drizzle-orm";
import { RetryableReplicationError, type HistoryApplier } from "../../replication/applier";
import { createCli } from "../../src/cli/cli";
import { BackfillService } from "../../src/gen/tern/admin/v1/backfill_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { eventually } from "../support/eventually";
import type { TestCluster } from "../support/server";

export const T = { workflowType: "order", taskQueue: "q" };

/** Runs the real CLI in process against x's frontend. */
export async function tern(x: TestCluster, ...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const cli = createCli({
    createTransport: (baseUrl) => createConnectTransport({ baseUrl }),
    stdout: (t) => void (out += t),
    stderr: (t) => void (err += t),
  });
  const code = await cli.run(["--address", x.url, ...argv]);
  return { code, out, err };
}

/** Runs fn over items with at most limit in flight. */
export async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

/**
 * Executions of a namespace on x: `count` workflows, every fifth signalled twice, every
 * third completed, every 100th completed and started again (a second run).
 */
export async function seedExecutions(x: TestCluster, namespace: string, count: number, prefix = "wf"): Promise<void> {
  const wf = x.client(WorkflowService);
  await pool(Array.from({ length: count }, (_, i) => i), 16, async (i) => {
    const workflowId = `${prefix}-${String(i).padStart(4, "0")}`;
    await wf.startWorkflowExecution({ namespace, workflowId, ...T });
    if (i % 5 === 0) {
      for (const s of ["a", "b"]) await wf.signalWorkflowExecution({ namespace, workflowExecution: { workflowId }, signalName: s });
    }
    if (i % 3 === 0 || i % 100 === 0) await wf.completeWorkflowExecution({ namespace, workflowExecution: { workflowId } });
    if (i % 100 === 0) await wf.startWorkflowExecution({ namespace, workflowId, ...T });
  });
}

/** Per run of the namespace on x: event count, last event id and type, status (straight from its database). */
export async function runsOf(x: TestCluster, namespace: string) {
  const ns = (await x.client(WorkflowService).describeNamespace({ namespace })).namespace!;
  const rows = await x.server.database.db.execute(sql`
    select e.workflow_id, e.run_id, x.status, x.next_event_id::int as next, count(*)::int as events,
           max(e.event_id)::int as last, (array_agg(e.event_type order by e.event_id desc))[1] as last_type
    from history_events e join executions x using (namespace_id, workflow_id, run_id)
    where e.namespace_id = ${ns.namespaceInfo!.id}
    group by 1, 2, 3, 4 order by 1, 2`);
  return ((rows as { rows?: unknown[] }).rows ?? (rows as unknown as unknown[])) as Record<string, unknown>[];
}

/** A run's full history as comparable rows. */
export async function historyOf(x: TestCluster, namespace: string, workflowId: string, runId: string) {
  const res = await x.client(WorkflowService).getWorkflowExecutionHistory({ namespace, execution: { workflowId, runId }, maximumPageSize: 1000 });
  return res.history!.events.map((e) => JSON.stringify(e, (_k, v) => (typeof v === "bigint" ? String(v) : v)));
}

/** Waits until x's backfill of namespace from source is DONE with done == total, and returns the job. */
export function backfillDone(x: TestCluster, namespace: string, source: string, timeout = 60_000) {
  return eventually(async () => {
    const res = await x.client(BackfillService).getBackfillStatus({ namespace });
    const job = res.jobs.find((j) => j.sourceCluster === source);
    expect(job?.status).toBe("DONE");
    expect(job!.done).toBe(job!.total);
    return job!;
  }, { timeout, interval: 100 });
}

/** Expects x and y to hold the same runs of namespace, event for event on a sample. */
export async function expectSameRuns(x: TestCluster, y: TestCluster, namespace: string, sampleEvery = 50): Promise<number> {
  const [onX, onY] = await Promise.all([runsOf(x, namespace), runsOf(y, namespace)]);
  expect(onY.length).toBe(onX.length);
  expect(onY).toEqual(onX);
  for (let i = 0; i < onX.length; i += sampleEvery) {
    const r = onX[i]!;
    const [hx, hy] = await Promise.all([
      historyOf(x, namespace, String(r.workflow_id), String(r.run_id)),
      historyOf(y, namespace, String(r.workflow_id), String(r.run_id)),
    ]);
    expect(hy).toEqual(hx);
  }
  return onX.length;
}

/**
 * A wrapApplier (serverOptions.replication) whose applies of the runs held(namespace, workflowId)
 * names fail as a busy database's would: a backfill stays RUNNING at their page, saying so.
 */
export function holdingApplies(held: (namespace: string, workflowId: string) => boolean) {
  return (applier: HistoryApplier): HistoryApplier => ({
    ...applier,
    async applyTask(tx, ns, task, fetchRaw) {
      if (held(ns.name, task.workflowId)) throw new RetryableReplicationError(`injected: ${task.workflowId} waits`);
      return applier.applyTask(tx, ns, task, fetchRaw);
    },
  });
}
