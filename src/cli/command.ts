import type { Client } from "@connectrpc/connect";
import type { BackfillService } from "../gen/tern/admin/v1/backfill_pb";
import type { AdminService } from "../gen/tern/admin/v1/service_pb";
import type { OperatorService } from "../gen/tern/operator/v1/service_pb";
import type { WorkflowService } from "../gen/tern/workflow/v1/service_pb";
import type { FlagSpec, ParsedArgs } from "./args";
import type { AdminDbBackend } from "./admin-db-backend";
import type { OutputFormat, Writer } from "./output";

/** What a command gets to do its work; built per run by createCli. */
export interface CommandContext {
  /** The WorkflowService client (created on first use). */
  workflow(): Client<typeof WorkflowService>;
  /** The OperatorService client (created on first use). */
  operator(): Client<typeof OperatorService>;
  /** The AdminService client (created on first use). */
  admin(): Client<typeof AdminService>;
  /** The BackfillService client (created on first use). */
  backfill(): Client<typeof BackfillService>;
  /** Base URL of the server, for messages. */
  address: string;
  format: OutputFormat;
  /** Standard output. */
  out: Writer;
  /** Standard error, for progress and warnings. */
  err: Writer;
  /** Aborted on Ctrl-C; pass to every RPC. */
  signal: AbortSignal;
  /** The timeoutMs of a call the server holds for waitMs on purpose: --rpc-timeout on top (0: none). */
  deadlineMs(waitMs: number): number;
  /** The wait of a call that works through a whole namespace or DLQ, or a page of a verify (LONG_RUN_MS). */
  longRunMs: number;
  /** True when a person can answer a prompt. */
  interactive: boolean;
  /** Asks a question on the terminal and returns the answer line. */
  prompt(question: string): Promise<string>;
  /** Loads the database operations (only admin db commands need them). */
  adminDb(): Promise<AdminDbBackend>;
}

/** A runnable command (a leaf of the tree). */
export interface LeafCommand {
  kind: "leaf";
  name: string;
  /** One line for listings. */
  summary: string;
  /** Extra paragraphs for --help (output shapes, examples). */
  details?: string;
  flags: FlagSpec[];
  /** Usage text for positionals, e.g. "[NAMESPACE]". */
  positionals?: string;
  /** How many positionals are accepted (default 0). */
  maxPositionals?: number;
  /** Set where the command works on the database itself, not through a server: --address and --rpc-timeout are refused. */
  direct?: true;
  /** Runs the command; returns an exit code or nothing for 0. */
  run(ctx: CommandContext, args: ParsedArgs): Promise<number | void>;
}

/** A command with subcommands (`tern workflow`, `tern operator namespace`). */
export interface GroupCommand {
  kind: "group";
  name: string;
  summary: string;
  commands: Command[];
}

/** A node of the command tree. */
export type Command = LeafCommand | GroupCommand;

/** The flags every command accepts, anywhere on the line (a `direct` one refuses the server's two). */
export const GLOBAL_FLAGS: FlagSpec[] = [
  {
    name: "address",
    kind: "string",
    valueName: "HOST:PORT|URL",
    description: "Frontend address of the tern cluster",
    defaultText: "127.0.0.1:7233",
  },
  {
    name: "rpc-timeout",
    kind: "string",
    valueName: "DURATION",
    description: "How long a call may go unanswered (0: no limit); a failover's or follow's wait comes on top",
    defaultText: "30s",
  },
  { name: "output", alias: "o", kind: "string", valueName: "FORMAT", description: "Output format: table or json", defaultText: "table", choices: ["table", "json"] },
  { name: "help", alias: "h", kind: "boolean", description: "Show help for the command" },
];

/** The global flags a command takes: a `direct` one, or a group of only such, talks to no server. */
export function globalFlagsOf(command: Command): FlagSpec[] {
  return isDirect(command) ? GLOBAL_FLAGS.filter((f) => !SERVER_FLAGS.includes(f.name)) : GLOBAL_FLAGS;
}

function isDirect(command: Command): boolean {
  return command.kind === "leaf" ? command.direct === true : command.commands.every(isDirect);
}

/** The global flags that only say how to reach a server. */
export const SERVER_FLAGS = ["address", "rpc-timeout"];
