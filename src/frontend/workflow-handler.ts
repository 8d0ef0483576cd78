import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Duration } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  WorkflowService,
  type GetWorkflowExecutionHistoryRequest,
  type GetWorkflowExecutionHistoryResponseSchema,
  type SignalWithStartWorkflowExecutionRequest,
  type StartWorkflowExecutionRequest,
} from "../gen/tern/workflow/v1/service_pb";
import type { HistoryEngine, RunRef, StartInput } from "../history/engine";
import { historyTokenRunId, type HistoryQueries } from "../history/queries";
import type { NamespaceRegistry } from "../namespace/registry";
import { invalidArgument } from "../errors";
import { answerAtDeadline, answerWithinMs } from "./deadline";
import { dateOf, durationMs, exactNumber, executionToProto, namespaceToProto, statusFromProto } from "./convert";
import type { ForcedFailoverCheck } from "../../replication/forced-failover-check";
import { versionHistoryToProto } from "../../replication/version-history";

export interface WorkflowHandlerDeps {
  namespaces: NamespaceRegistry;
  engine: HistoryEngine;
  queries: HistoryQueries;
  /** Refuses a forced failover its target would never hear of, or one to a target still backfilling (replication/forced-failover-check.ts). */
  checkForcedFailover?: ForcedFailoverCheck;
}

const LONG_POLL_DEFAULT_MS = 20_000;
const LONG_POLL_MAX_MS = 60_000;

/** How long a GetWorkflowExecutionHistory long poll waits for a new event, given its wait_timeout. */
export const historyWaitMs = (waitTimeout: Duration | undefined) => Math.min(durationMs(waitTimeout, "wait timeout", LONG_POLL_DEFAULT_MS), LONG_POLL_MAX_MS);

/**
 * What a history long poll answers at its deadline (deadlineAnswerKey): the page its wait ends with
 * when nothing new came, empty, with the request's own token to poll again from. None for a poll
 * without a token: it reads from the first event, and a page without events or token says the
 * history ends there; nor for a token that names no run (the read refuses it).
 */
export function expiredPollPage(r: Pick<GetWorkflowExecutionHistoryRequest, "waitNewEvent" | "nextPageToken">): MessageInitShape<typeof GetWorkflowExecutionHistoryResponseSchema> | undefined {
  const runId = r.waitNewEvent && r.nextPageToken.length ? historyTokenRunId(r.nextPageToken) : undefined;
  return runId === undefined ? undefined : { history: { events: [] }, nextPageToken: r.nextPageToken, runId };
}

const ref = (namespace: string, e: { workflowId: string; runId: string } | undefined, requestId: string, callSignal: AbortSignal, identity = ""): RunRef => ({
  namespace,
  workflowId: e?.workflowId ?? "",
  runId: e?.runId ?? "",
  requestId,
  identity,
  callSignal,
});

/** A requested retention in seconds; undefined keeps the default (register) or the current one (update). */
const retentionSecondsOf = (d: Duration | undefined) => (d ? durationMs(d, "retention") / 1000 : undefined);

/** The start fields shared by Start and SignalWithStart. */
function startInput(r: StartWorkflowExecutionRequest | SignalWithStartWorkflowExecutionRequest, callSignal: AbortSignal): StartInput {
  return {
    namespace: r.namespace,
    workflowId: r.workflowId,
    workflowType: r.workflowType,
    taskQueue: r.taskQueue,
    input: r.input,
    executionTimeoutMs: durationMs(r.workflowExecutionTimeout, "workflow execution timeout"),
    requestId: r.requestId,
    reusePolicy: r.workflowIdReusePolicy,
    identity: r.identity,
    callSignal,
  };
}

/** WorkflowService: convert proto to input, call a verb, convert back. */
export function createWorkflowHandler({ namespaces, engine, queries, checkForcedFailover }: WorkflowHandlerDeps): ServiceImpl<typeof WorkflowService> {
  return {
    async registerNamespace(r, { signal }) {
      const ns = await namespaces.register({
        name: r.namespace,
        description: r.description,
        ownerEmail: r.ownerEmail,
        retentionSeconds: retentionSecondsOf(r.workflowExecutionRetentionPeriod),
        data: r.data,
        isGlobal: r.isGlobalNamespace,
        clusters: r.clusters,
        activeClusterName: r.activeClusterName,
        signal,
      });
      return { namespace: namespaceToProto(ns) };
    },
    async describeNamespace(r) {
      return { namespace: namespaceToProto(await namespaces.describe({ name: r.namespace, id: r.id })) };
    },
    async listNamespaces(r) {
      const page = await namespaces.list(r.pageSize, r.nextPageToken);
      return { namespaces: page.items.map(namespaceToProto), nextPageToken: page.nextPageToken };
    },
    async updateNamespace(r, { signal }) {
      await checkForcedFailover?.(r.namespace, r.activeClusterName, r.clusters, r.allowUnfinishedBackfill, signal);
      const { namespace, failedOver } = await namespaces.update({
        name: r.namespace,
        description: r.description,
        ownerEmail: r.ownerEmail,
        retentionSeconds: retentionSecondsOf(r.workflowExecutionRetentionPeriod),
        data: r.data,
        clusters: r.clusters,
        activeClusterName: r.activeClusterName,
        promote: r.promoteNamespace,
        signal,
      });
      return { namespace: namespaceToProto(namespace), failedOver };
    },
    async deprecateNamespace(r, { signal }) {
      return { namespace: namespaceToProto(await namespaces.deprecate(r.namespace, signal)) };
    },
    async startWorkflowExecution(r, { signal }) {
      return engine.start(startInput(r, signal));
    },
    async signalWorkflowExecution(r, { signal }) {
      const res = await engine.signal(ref(r.namespace, r.workflowExecution, r.requestId, signal, r.identity), r.signalName, r.input);
      return { runId: res.runId, eventId: BigInt(res.eventId) };
    },
    async signalWithStartWorkflowExecution(r, { signal }) {
      if (!r.signalName) throw invalidArgument("signal name is required");
      return engine.start({ ...startInput(r, signal), signal: { name: r.signalName, input: r.signalInput } });
    },
    async requestCancelWorkflowExecution(r, { signal }) {
      await engine.requestCancel(ref(r.namespace, r.workflowExecution, r.requestId, signal, r.identity), r.reason);
      return {};
    },
    async terminateWorkflowExecution(r, { signal }) {
      await engine.terminate(ref(r.namespace, r.workflowExecution, r.requestId, signal, r.identity), r.reason, r.details);
      return {};
    },
    async completeWorkflowExecution(r, { signal }) {
      await engine.complete(ref(r.namespace, r.workflowExecution, r.requestId, signal), r.result);
      return {};
    },
    async failWorkflowExecution(r, { signal }) {
      await engine.fail(ref(r.namespace, r.workflowExecution, r.requestId, signal), r.failure);
      return {};
    },
    async recordMarker(r, { signal }) {
      const expected = r.expectedNextEventId === undefined ? undefined : exactNumber(r.expectedNextEventId, "expected next event id");
      // Bad input, not a run that moved on: no run's next event id is below 1.
      if (expected !== undefined && expected < 1) {
        throw invalidArgument(`expected next event id ${expected} is not an event id: they begin at 1 (leave it out to write the marker whatever the run's next event id)`);
      }
      const res = await engine.recordMarker(ref(r.namespace, r.workflowExecution, r.requestId, signal), r.markerName, r.details, expected);
      return { eventId: BigInt(res.eventId) };
    },
    async describeWorkflowExecution(r) {
      const run = await queries.describe(r.namespace, r.execution?.workflowId ?? "", r.execution?.runId ?? "");
      return {
        workflowExecutionInfo: executionToProto(run),
        shardId: run.shardId,
        nextEventId: BigInt(run.nextEventId),
        lastWriteVersion: BigInt(run.lastWriteVersion),
        versionHistory: versionHistoryToProto(run.versionHistory),
      };
    },
    async getWorkflowExecutionHistory(r, ctx) {
      // A long poll ends in time to answer its page by the caller's deadline (Temporal's history
      // does so too): past it, the caller got DEADLINE_EXCEEDED for a wait that found nothing new.
      const callerMs = ctx.timeoutMs();
      const waitMs = Math.min(historyWaitMs(r.waitTimeout), callerMs === undefined ? Infinity : answerWithinMs(callerMs));
      // Past that margin (a stall of the database or of this process), the same page at the deadline.
      if (callerMs !== undefined) answerAtDeadline(ctx, expiredPollPage(r));
      const page = await queries.getHistory({
        namespace: r.namespace,
        workflowId: r.execution?.workflowId ?? "",
        runId: r.execution?.runId ?? "",
        pageSize: r.maximumPageSize,
        token: r.nextPageToken,
        waitNewEvent: r.waitNewEvent,
        waitMs,
        signal: ctx.signal,
      });
      return { history: { events: page.events }, nextPageToken: page.nextPageToken, runId: page.runId };
    },
    async listWorkflowExecutions(r) {
      const page = await queries.list(r.namespace, r.pageSize, r.nextPageToken, {
        status: statusFromProto(r.status),
        workflowType: r.workflowType || undefined,
        workflowIdPrefix: r.workflowIdPrefix || undefined,
        startTimeMin: dateOf(r.startTimeMin, "start_time_min"),
        startTimeMax: dateOf(r.startTimeMax, "start_time_max"),
      });
      return { executions: page.items.map(executionToProto), nextPageToken: page.nextPageToken };
    },
  };
}
