import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { BackfillService } from "../gen/tern/admin/v1/backfill_pb";
import { AdminService } from "../gen/tern/admin/v1/service_pb";
import { OperatorService } from "../gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../gen/tern/workflow/v1/service_pb";
import { DEFAULT_ADDRESS, normalizeAddress } from "./address";
import type { AdminDbBackend } from "./admin-db-backend";
import { attachShortValue, findFlag, type FlagSpec, getBoolean, getString, isBooleanWord, isFlagToken, type ParsedArgs, parseArgs, splitFlagToken } from "./args";
import { type Command, type CommandContext, GLOBAL_FLAGS, type LeafCommand, SERVER_FLAGS } from "./command";
import { defaultNamespaceHint, workflowNamespaceFlag } from "./commands/common-flags";
import { rootCommand } from "./commands/root";
import { LONG_RUN_MS, parseRpcTimeout, withDeadline } from "./deadline";
import { CliError, ExitCode, formatError, isAbort, UsageError, usageHint } from "./errors";
import { renderHelp } from "./help";
import { suggestNames } from "./suggest";
import { type ReadInput, readJsonSources } from "./json-source";
import type { OutputFormat, Writer } from "./output";
import { VERSION } from "../version";

/** Everything the CLI touches outside itself; main.ts wires the real ones, tests fakes. */
export interface CliDeps {
  /** Builds the transport for a base URL (tests return a router transport). */
  createTransport(baseUrl: string): Transport;
  stdout: Writer;
  stderr: Writer;
  /** Aborted on Ctrl-C. */
  signal?: AbortSignal;
  /** True when stdin and stdout are a terminal, so prompts can be answered. */
  interactive?: boolean;
  /** Reads one answer line from the terminal. */
  prompt?(question: string): Promise<string>;
  /** Reads standard input or a file, for a JSON flag's `-` or `@PATH`. */
  readInput?: ReadInput;
  /** The database operations for `admin db`. */
  loadAdminDb?(): Promise<AdminDbBackend>;
  /** The command tree (tests may pass a smaller one). */
  root?: Command;
  /** The wait on top of --rpc-timeout of a call that works through a namespace or a DLQ (default LONG_RUN_MS; tests shorten it). */
  longRunMs?: number;
}

/** The CLI as a function of argv to exit code. */
export interface Cli {
  run(argv: readonly string[]): Promise<number>;
}

/** Where argv led in the command tree. */
export interface Resolved {
  command: Command;
  /** The command words after "tern". */
  path: string[];
  /** argv without the command words and --help. */
  rest: string[];
  help: boolean;
  /** Set when a word names no subcommand. */
  unknown?: string;
  /** With unknown: the subcommands that word may have meant (suggest.ts), nearest first. */
  suggestions?: string[];
}

/** Walks argv down the command tree; global flags may appear anywhere. */
export function resolveCommand(root: Command, argv: readonly string[]): Resolved {
  let command = root;
  const path: string[] = [];
  const rest: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    // The word after a command's own string flag is that flag's value (`--reason -oops`), which parseArgs takes as is.
    const token = command.kind === "leaf" && takesValue(command.flags, argv[i - 1]) ? argv[i]! : attachShortValue(argv[i]!, GLOBAL_FLAGS);
    if (token === "--") {
      rest.push(...argv.slice(i));
      break;
    }
    if (isFlagToken(token)) {
      const spec = findFlag(GLOBAL_FLAGS, splitFlagToken(token).flag);
      const next = token.includes("=") ? undefined : argv[i + 1];
      // A string flag does not take another global flag for its value: parseArgs says the value is missing.
      const nextIsGlobal = next !== undefined && isFlagToken(next) && findFlag(GLOBAL_FLAGS, splitFlagToken(next).flag) !== undefined;
      const takesNext = next !== undefined && ((spec?.kind === "string" && !nextIsGlobal) || (spec?.kind === "boolean" && isBooleanWord(next)));
      const tokens = takesNext ? [token, argv[++i]!] : [token];
      if (spec?.name === "help") help = getBoolean(parseArgs(tokens, GLOBAL_FLAGS), "help");
      else rest.push(...tokens);
      continue;
    }
    // `tern help workflow start`, as git and kubectl take it: the same as `tern workflow start --help`.
    if (path.length === 0 && token === "help" && command.kind === "group" && !command.commands.some((c) => c.name === token)) {
      help = true;
      continue;
    }
    if (command.kind === "group") {
      const child = command.commands.find((c) => c.name === token);
      if (!child) {
        const where = ["tern", ...path].join(" ");
        const mistake = strayFlagBefore(argv[i - 1]) ?? commandTakenAsValue(command, argv[i - 2], argv[i - 1]);
        if (mistake) return { command, path, rest: [], help, unknown: mistake };
        // `tern help ...` is taken at the top too, though no command of the tree.
        const names = [...command.commands.map((c) => c.name), ...(path.length === 0 ? ["help"] : [])];
        return { command, path, rest: [], help, unknown: `unknown command "${token}" for "${where}"`, suggestions: suggestNames(token, names) };
      }
      command = child;
      path.push(token);
    } else {
      rest.push(token);
    }
  }
  return { command, path, rest, help };
}

/** True when previous is a flag of specs that takes the next word for its value (`--reason`, not `--reason=x`). */
function takesValue(specs: readonly FlagSpec[], previous: string | undefined): boolean {
  return previous !== undefined && isFlagToken(previous) && !previous.includes("=") && findFlag(specs, previous)?.kind === "string";
}

/**
 * When the word that named no command follows a flag that is not global (`tern -adress HOST
 * operator ...`), that flag is the mistake: the word is its value.
 */
function strayFlagBefore(previous: string | undefined): string | undefined {
  if (previous === undefined || !isFlagToken(previous) || previous.includes("=")) return undefined;
  if (findFlag(GLOBAL_FLAGS, previous)) return undefined;
  const globals = GLOBAL_FLAGS.map((f) => `--${f.name}`).join(", ");
  return `unknown flag ${previous} before the command (the flags taken there are ${globals}; a command's own flags go after it)`;
}

/**
 * When the word that named no command follows a global flag's value that is a command of the
 * group (`tern --address operator cluster ...`), the flag's value was left out.
 */
function commandTakenAsValue(group: Command, flag: string | undefined, value: string | undefined): string | undefined {
  if (group.kind !== "group" || flag === undefined || !isFlagToken(flag) || flag.includes("=")) return undefined;
  if (findFlag(GLOBAL_FLAGS, flag)?.kind !== "string" || !group.commands.some((c) => c.name === value)) return undefined;
  return `${flag} needs a value (it took the command "${value}" for one)`;
}

/** Creates the CLI over its dependencies. */
export function createCli(deps: CliDeps): Cli {
  const root = deps.root ?? rootCommand;
  return {
    async run(argv) {
      let path: string[] = [];
      let address = `http://${DEFAULT_ADDRESS}`;
      try {
        // What a new user types first; the server's own is ServerVersion in `operator cluster describe`.
        if (argv.length === 1 && argv[0] === "--version") {
          deps.stdout(`tern ${VERSION}\n`);
          return ExitCode.ok;
        }
        const resolved = resolveCommand(root, argv);
        path = resolved.path;
        const unknown = resolved.unknown;
        if (resolved.help && !unknown) {
          deps.stdout(renderHelp(resolved.command, path));
          return ExitCode.ok;
        }
        if (unknown) throw new UsageError(unknown, didYouMean(resolved.suggestions ?? []));
        if (resolved.command.kind === "group") return runGroup(resolved, deps);
        const leaf = resolved.command;
        const args = parseArgs(resolved.rest, [...GLOBAL_FLAGS, ...leaf.flags]);
        if (leaf.direct) refuseServerFlags(args, path);
        address = normalizeAddress(getString(args, "address") ?? DEFAULT_ADDRESS);
        const rpcTimeoutMs = parseRpcTimeout(getString(args, "rpc-timeout"));
        const ctx = buildContext(deps, address, parseFormat(getString(args, "output")), rpcTimeoutMs);
        checkPositionals(leaf, args.positionals);
        await readJsonSources(args, leaf.flags, deps.readInput ?? (() => Promise.reject(new Error("no input to read here"))), deps.signal ?? new AbortController().signal);
        try {
          return (await leaf.run(ctx, args)) ?? ExitCode.ok;
        } catch (err) {
          throw leaf.flags.includes(workflowNamespaceFlag) ? await defaultNamespaceHint(ctx, args, err) : err;
        }
      } catch (err) {
        return report(err, deps, path, address);
      }
    },
  };
}

/** The lines under an unknown command's error naming the commands it may have meant, as the temporal CLI (cobra) prints them. */
function didYouMean(names: readonly string[]): string | undefined {
  if (names.length === 0) return undefined;
  return `\nDid you mean ${names.length === 1 ? "this" : "one of these"}?\n${names.map((n) => `\t${n}\n`).join("")}\n`;
}

function runGroup(resolved: Resolved, deps: CliDeps): number {
  const stray = resolved.rest.find((t) => isFlagToken(t) && !findFlag(GLOBAL_FLAGS, splitFlagToken(t).flag));
  if (stray) throw new UsageError(`unknown flag ${splitFlagToken(stray).flag} (choose a subcommand first)`);
  deps.stdout(renderHelp(resolved.command, resolved.path));
  return ExitCode.ok;
}

function report(err: unknown, deps: CliDeps, path: readonly string[], address: string): number {
  if (isAbort(err) && deps.signal?.aborted) return ExitCode.interrupted;
  deps.stderr(formatError(err, address) + "\n");
  if (err instanceof UsageError) {
    if (err.more) deps.stderr(err.more);
    deps.stderr(usageHint(path) + "\n");
    return ExitCode.usage;
  }
  return ExitCode.failure;
}

/** A command that works on the database itself would silently ignore a server's address: `tern --address prod admin db migrate` must not migrate the local config's database. */
function refuseServerFlags(args: ParsedArgs, path: readonly string[]): void {
  const given = SERVER_FLAGS.find((name) => getString(args, name) !== undefined);
  if (given === undefined) return;
  throw new UsageError(`--${given} does not apply to 'tern ${path.join(" ")}': it works on the database itself, not through a server; name the database with --config or --database-url`);
}

function parseFormat(value: string | undefined): OutputFormat {
  // `-o JSON` is no other format: the names are matched in any case.
  const name = value?.toLowerCase();
  if (name === undefined || name === "table") return "table";
  if (name === "json") return "json";
  throw new UsageError(`--output must be table or json, got "${value}"`);
}

function checkPositionals(leaf: LeafCommand, positionals: readonly string[]): void {
  const max = leaf.maxPositionals ?? 0;
  if (positionals.length > max) throw new UsageError(`unexpected argument "${positionals[max]}"`);
}

function buildContext(deps: CliDeps, address: string, format: OutputFormat, rpcTimeoutMs: number): CommandContext {
  let transport: Transport | undefined;
  const clients = new Map<unknown, unknown>();
  const client = <S extends typeof WorkflowService | typeof OperatorService | typeof AdminService | typeof BackfillService>(service: S): Client<S> => {
    transport ??= withDeadline(deps.createTransport(address), address, rpcTimeoutMs);
    if (!clients.has(service)) clients.set(service, createClient(service, transport));
    return clients.get(service) as Client<S>;
  };
  return {
    workflow: () => client(WorkflowService),
    operator: () => client(OperatorService),
    admin: () => client(AdminService),
    backfill: () => client(BackfillService),
    address,
    format,
    out: deps.stdout,
    err: deps.stderr,
    signal: deps.signal ?? new AbortController().signal,
    deadlineMs: (waitMs) => (rpcTimeoutMs === 0 ? 0 : rpcTimeoutMs + waitMs),
    longRunMs: deps.longRunMs ?? LONG_RUN_MS,
    interactive: deps.interactive ?? false,
    prompt: deps.prompt ?? (() => Promise.reject(new CliError("no terminal to ask for confirmation"))),
    adminDb: deps.loadAdminDb ?? (() => Promise.reject(new CliError("database commands are not available here"))),
  };
}
