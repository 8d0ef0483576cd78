import { and, eq, sql } from "drizzle-orm";
import { TernError } from "../errors";
import { WorkflowExecutionAlreadyStartedFailureSchema } from "../gen/tern/errordetails/v1/message_pb";
import type { Db } from "../persistence/database";
import { executions } from "../persistence/schema";
import { CURRENT_RUN_ORDER, readRunEvents, type RunKey } from "./execution-store";

/**
 * ALREADY_EXISTS for a start that met run, the current run of its workflow id (open, or closed
 * where the reuse policy refused another), as Temporal answers it: the run's id in the message
 * and, with the request id that started it, in a WorkflowExecutionAlreadyStartedFailure detail,
 * which clients ported from Temporal read to find the run. Reads the run's started event.
 */
export async function alreadyStarted(db: Db, run: RunKey, why: string): Promise<TernError> {
  const [started] = await readRunEvents(db, run, 1, { limit: 1 });
  const attributes = started?.attributes;
  const startRequestId = attributes?.case === "workflowExecutionStartedEventAttributes" ? attributes.value.requestId : "";
  return new TernError("already_exists", `workflow execution ${run.workflowId} ${why} (run ${run.runId})`, {}, [
    { desc: WorkflowExecutionAlreadyStartedFailureSchema, value: { runId: run.runId, startRequestId } },
  ]);
}

/** Thrown inside a start's transaction when it met run; alreadyStarted answers it once the transaction is over. */
export class StartRefused extends Error {
  override name = "StartRefused";
  constructor(readonly run: RunKey, readonly why: string) {
    super(`workflow execution ${run.workflowId} ${why}`);
  }
}

/** The workflow's current run (CURRENT_RUN_ORDER), read without a lock; undefined when it has none. */
export async function currentRun(db: Db, namespaceId: string, workflowId: string): Promise<RunKey | undefined> {
  const [row] = await db
    .select({ namespaceId: executions.namespaceId, workflowId: executions.workflowId, runId: executions.runId })
    .from(executions)
    .where(and(eq(executions.namespaceId, namespaceId), eq(executions.workflowId, workflowId)))
    .orderBy(sql.raw(CURRENT_RUN_ORDER))
    .limit(1);
  return row;
}
