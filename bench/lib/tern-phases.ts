import { runLoad } from "./load";
import { rowOf, type ResultRow } from "./report";
import {
  createTernClient, registerBenchNamespace, signalTargets, signalWorkflow, startWorkflow, targetOf, type TernClient,
} from "./tern-workload";

export interface TernPhasesOptions {
  store: ResultRow["store"];
  baseUrl: string;
  clientCounts: readonly number[];
  warmupMs: number;
  durationMs: number;
  /** Called as each phase finishes (progress output). */
  onRow: (row: ResultRow) => void;
}

/** StartWorkflowExecution then SignalWorkflowExecution phases at each client count, in a fresh namespace. */
export async function runTernPhases(opts: TernPhasesOptions): Promise<ResultRow[]> {
  const { store, clientCounts, warmupMs, durationMs, onRow } = opts;
  const client = createTernClient(opts.baseUrl);
  const tag = crypto.randomUUID().slice(0, 8);
  const namespace = await registerBenchNamespace(client, `bench-${tag}`);
  const rows: ResultRow[] = [];
  const record = (row: ResultRow) => (rows.push(row), onRow(row));

  for (const clients of clientCounts) {
    const prefix = `start-${tag}-c${clients}`;
    const result = await runLoad({
      clients, warmupMs, durationMs,
      op: (c, seq) => startWorkflow(client, namespace, `${prefix}-${c}-${seq}`),
    });
    record(rowOf(store, "start", result));
  }
  for (const clients of clientCounts) {
    const targets = signalTargets(`signal-${tag}-c${clients}`, clients);
    await startAll(client, namespace, targets);
    const result = await runLoad({
      clients, warmupMs, durationMs,
      op: (c, seq) => signalWorkflow(client, namespace, targetOf(targets, clients, c, seq)),
    });
    record(rowOf(store, "signal", result));
  }
  return rows;
}

/** Starts the signal targets, a few at a time. */
async function startAll(client: TernClient, namespace: string, workflowIds: readonly string[]): Promise<void> {
  for (let i = 0; i < workflowIds.length; i += 8) {
    await Promise.all(workflowIds.slice(i, i + 8).map((id) => startWorkflow(client, namespace, id)));
  }
}
