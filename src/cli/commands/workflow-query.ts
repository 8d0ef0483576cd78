import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { WorkflowExecutionStatus } from "../../gen/tern/common/v1/common_pb";
import {
  DescribeWorkflowExecutionResponseSchema,
  WorkflowExecutionInfoSchema,
} from "../../gen/tern/workflow/v1/service_pb";
import { getString, type ParsedArgs } from "../args";
import type { LeafCommand } from "../command";
import { UsageError } from "../errors";
import { describeExecution, executionTable } from "../format-workflow";
import { listJson, messageJson } from "../output";
import { collectPages } from "../paging";
import { parseTime } from "../time";
import {
  executionArg,
  positiveIntArg,
  runIdFlag,
  workflowIdFlag,
  workflowNamespace,
  workflowNamespaceFlag,
} from "./common-flags";

const STATUSES: Record<string, WorkflowExecutionStatus> = {
  running: WorkflowExecutionStatus.RUNNING,
  completed: WorkflowExecutionStatus.COMPLETED,
  failed: WorkflowExecutionStatus.FAILED,
  canceled: WorkflowExecutionStatus.CANCELED,
  cancelled: WorkflowExecutionStatus.CANCELED,
  terminated: WorkflowExecutionStatus.TERMINATED,
  timedout: WorkflowExecutionStatus.TIMED_OUT,
};

/** Parses --status (running, completed, failed, canceled, terminated, timed-out). */
export function parseStatus(text: string | undefined): WorkflowExecutionStatus {
  if (text === undefined) return WorkflowExecutionStatus.UNSPECIFIED;
  const status = STATUSES[text.toLowerCase().replace(/[^a-z]/g, "")];
  if (status === undefined) {
    throw new UsageError(
      `--status must be running, completed, failed, canceled, terminated or timed-out, got "${text}"`,
    );
  }
  return status;
}

/** Parses an RFC 3339 time flag into a Timestamp. */
export function parseTimeArg(args: ParsedArgs, name: string): Timestamp | undefined {
  const text = getString(args, name);
  return text === undefined ? undefined : parseTime(text, name);
}

const describe: LeafCommand = {
  kind: "leaf",
  name: "describe",
  summary: "Describe a workflow execution (status, versions, shard)",
  flags: [workflowNamespaceFlag, workflowIdFlag, runIdFlag],
  async run(ctx, args) {
    const req = { namespace: workflowNamespace(args), execution: executionArg(args) };
    const res = await ctx.workflow().describeWorkflowExecution(req, { signal: ctx.signal });
    ctx.out(ctx.format === "json" ? messageJson(DescribeWorkflowExecutionResponseSchema, res) : describeExecution(res));
  },
};

const MAX_PAGE = 1000;

const list: LeafCommand = {
  kind: "leaf",
  name: "list",
  summary: "List workflow executions of a namespace",
  details: 'With -o json, prints { "executions": [WorkflowExecutionInfo, ...] } with every page merged.',
  flags: [
    workflowNamespaceFlag,
    { name: "status", kind: "string", valueName: "STATUS", description: "running, completed, failed, canceled, terminated or timed-out" },
    { name: "type", kind: "string", valueName: "TYPE", description: "Only this workflow type" },
    { name: "workflow-id-prefix", kind: "string", valueName: "PREFIX", description: "Only workflow ids starting with PREFIX" },
    { name: "start-after", kind: "string", valueName: "TIME", description: "Only started at or after this RFC 3339 time (UTC unless it names a zone)" },
    { name: "start-before", kind: "string", valueName: "TIME", description: "Only started at or before this RFC 3339 time (UTC unless it names a zone)" },
    { name: "limit", kind: "string", valueName: "N", description: "Stop after N executions (default: all)" },
  ],
  async run(ctx, args) {
    const limit = positiveIntArg(args, "limit");
    const filter = {
      namespace: workflowNamespace(args),
      pageSize: limit ? Math.min(limit, MAX_PAGE) : 0,
      status: parseStatus(getString(args, "status")),
      workflowType: getString(args, "type") ?? "",
      workflowIdPrefix: getString(args, "workflow-id-prefix") ?? "",
      startTimeMin: parseTimeArg(args, "start-after"),
      startTimeMax: parseTimeArg(args, "start-before"),
    };
    const items = await collectPages(async (nextPageToken) => {
      const res = await ctx.workflow().listWorkflowExecutions({ ...filter, nextPageToken }, { signal: ctx.signal });
      return { items: res.executions, nextPageToken: res.nextPageToken };
    }, limit);
    ctx.out(ctx.format === "json" ? listJson("executions", WorkflowExecutionInfoSchema, items) : executionTable(items));
  },
};

/** `workflow describe` and `workflow list`. */
export const queryCommands: LeafCommand[] = [describe, list];
