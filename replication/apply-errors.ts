import { Code, ConnectError } from "@connectrpc/connect";
import { connectionLost } from "../src/errors";
import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import type { VersionHistoryItem } from "../src/persistence/schema";

/** One replication task as received from the source: events [firstEventId, nextEventId) of a run. */
export interface IncomingTask {
  namespaceId: string;
  workflowId: string;
  runId: string;
  firstEventId: number;
  nextEventId: number;
  versionHistory: VersionHistoryItem[];
  events: HistoryEvent[];
}

/** Fetches events [first, next) of the branch the task's version history describes from the source (gap repair). */
export type RawHistoryFetcher = (task: IncomingTask, first: number, next: number) => Promise<HistoryEvent[]>;

/** A failure that is not the task's fault (its namespace has not arrived yet, ...): retried forever, never DLQ'd. */
export class RetryableReplicationError extends Error {
  override name = "RetryableReplicationError";
}

/**
 * Whether an apply failure counts against the task's retry budget (and may send it to the
 * DLQ). An unreachable source, a namespace not replicated yet, or this cluster's own database
 * being down or restarting is not the task's fault.
 */
export function isTaskFailure(e: unknown): boolean {
  if (e instanceof RetryableReplicationError || connectionLost(e)) return false;
  return !(e instanceof ConnectError && SOURCE_UNREACHABLE.includes(e.code));
}

/**
 * The codes of a call to the source (a gap repair's raw history) that say nothing of the task.
 * Unknown is connect's code for a call that got no answer (a connection reset or refused: a
 * tern never answers it); counted against the task, a link down for 3 s sent the task to the
 * DLQ, and every later task of its run behind it, until an operator merged them.
 */
const SOURCE_UNREACHABLE = [Code.Unknown, Code.Unavailable, Code.DeadlineExceeded, Code.Canceled, Code.ResourceExhausted, Code.Aborted];

/** This cluster's database restarted since a stream's applies: those not flushed are gone, and the source must not hear of them. */
export class AppliesLostError extends Error {
  override name = "AppliesLostError";
}

/** Two branches that conflict resolution cannot order (they end at the same failover version). */
export class HistoryDivergenceError extends Error {
  override name = "HistoryDivergenceError";
}

