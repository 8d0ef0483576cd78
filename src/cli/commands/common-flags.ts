import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type WorkflowExecution, WorkflowExecutionSchema } from "../../gen/tern/common/v1/common_pb";
import { type FlagSpec, getString, type ParsedArgs, requireString } from "../args";
import type { CommandContext } from "../command";
import { CliError, UsageError } from "../errors";

/** -n/--namespace for workflow commands, defaulting like the Temporal CLI. */
export const workflowNamespaceFlag: FlagSpec = {
  name: "namespace",
  alias: "n",
  kind: "string",
  valueName: "NS",
  description: "Namespace",
  defaultText: "default",
};

/** -n/--namespace for namespace commands (required there; may be positional). */
export const namespaceFlag: FlagSpec = {
  name: "namespace",
  alias: "n",
  kind: "string",
  valueName: "NS",
  description: "Namespace name (or give it as the argument)",
};

/** -w/--workflow-id. */
export const workflowIdFlag: FlagSpec = {
  name: "workflow-id",
  alias: "w",
  kind: "string",
  valueName: "ID",
  description: "Workflow id (required)",
};

/** -r/--run-id. */
export const runIdFlag: FlagSpec = {
  name: "run-id",
  alias: "r",
  kind: "string",
  valueName: "ID",
  description: "Run id (default: the current run)",
};

/** --request-id, the idempotency key of a write. */
export const requestIdFlag: FlagSpec = {
  name: "request-id",
  kind: "string",
  valueName: "ID",
  description: "Idempotency key; a retry with the same id is applied once (default: random)",
};

/** The identity the CLI writes into history events. */
export const CLI_IDENTITY = "tern-cli";

/** The namespace of a workflow command (default "default"; given empty, a usage error). */
export function workflowNamespace(args: ParsedArgs): string {
  const namespace = getString(args, "namespace");
  if (namespace === "") throw new UsageError("--namespace is empty (leave it out for the namespace default)");
  return namespace ?? "default";
}

/** A name given by its flag or as the single positional (`what` names it in the refusal of both). */
export function flagOrPositional(args: ParsedArgs, flag: string, what: string): string | undefined {
  const given = getString(args, flag);
  const positional = args.positionals[0];
  if (given && positional && given !== positional) {
    throw new UsageError(`${what} given twice ("${given}" and "${positional}")`);
  }
  return given || positional || undefined;
}

/** The namespace of a namespace command: -n or the single positional, required. */
export function namespaceArg(args: ParsedArgs): string {
  const name = flagOrPositional(args, "namespace", "namespace");
  if (!name) throw new UsageError("--namespace is required");
  return name;
}

/** The (workflow id, run id) an execution command targets. */
export function executionArg(args: ParsedArgs): WorkflowExecution {
  return create(WorkflowExecutionSchema, {
    workflowId: requireString(args, "workflow-id"),
    runId: getString(args, "run-id") ?? "",
  });
}

/** --request-id or a fresh UUID, so each CLI call is one idempotent write. */
export function requestIdArg(args: ParsedArgs): string {
  return getString(args, "request-id") || crypto.randomUUID();
}

/** The largest int32 and int64: a flag's value past its field's type failed the request's encoding, reported as internal. */
export const INT32_MAX = 2 ** 31 - 1;
const INT64_MAX = 2n ** 63n - 1n;

/** Parses an integer flag (int64 as bigint); throws UsageError naming the flag. */
export function bigintArg(args: ParsedArgs, name: string): bigint | undefined {
  const text = getString(args, name);
  if (text === undefined) return undefined;
  if (!/^-?\d+$/.test(text)) throw new UsageError(`--${name} must be an integer, got "${text}"`);
  const n = BigInt(text);
  if (n > INT64_MAX || n < -INT64_MAX - 1n) throw new UsageError(`--${name} must be an integer of at most ${INT64_MAX}, got "${text}"`);
  return n;
}

/** Parses a positive integer flag up to max (an int32 field's: INT32_MAX); throws UsageError naming the flag. */
export function positiveIntArg(args: ParsedArgs, name: string, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const text = getString(args, name);
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`--${name} must be a positive integer, got "${text}"`);
  }
  if (n > max) throw new UsageError(`--${name} must be at most ${max}, got "${text}"`);
  return n;
}

/** How many namespace names the hint for a missing default namespace lists. */
const NAMESPACES_NAMED = 10;

/**
 * err, or, when it is the server's `namespace default not found` for a workflow command whose
 * -n/--namespace was left out, the same error saying the default was taken and how to choose
 * another, with the namespaces this cluster knows (one page; left out when the list fails).
 * The temporal CLI too takes "default" when -n is left out.
 */
export async function defaultNamespaceHint(ctx: CommandContext, args: ParsedArgs, err: unknown): Promise<unknown> {
  if (getString(args, "namespace") !== undefined || !(err instanceof ConnectError)) return err;
  if (err.code !== Code.NotFound || err.rawMessage !== "namespace default not found") return err;
  const list = await ctx.workflow().listNamespaces({ pageSize: NAMESPACES_NAMED + 1 }, { signal: ctx.signal }).catch(() => undefined);
  const names = (list?.namespaces ?? []).map((n) => n.namespaceInfo?.name ?? "").filter((n) => n !== "");
  const known = !list ? "" : names.length === 0
    ? "; this cluster has none yet ('tern operator namespace create -n NAME')"
    : `; this cluster has ${names.slice(0, NAMESPACES_NAMED).join(", ")}${names.length > NAMESPACES_NAMED || list.nextPageToken.length > 0 ? ", ..." : ""}`;
  return new CliError(`not_found: namespace default not found (-n/--namespace was left out, so the namespace default was asked): choose one with -n/--namespace NS${known}`);
}
