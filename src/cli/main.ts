// Composition root of the CLI: the only place that touches process, the terminal and the network stack.
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline/promises";
import { createConnectTransport } from "@connectrpc/connect-web";
import { sleep } from "../sleep";
import { loadAdminDbBackend } from "./admin-db-backend";
import { createCli } from "./cli";
import { ExitCode } from "./errors";
import type { Writer } from "./output";

/** Asks one question on the terminal. */
async function prompt(question: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return await rl.question(question);
  } finally {
    rl.close();
  }
}

/** The text of standard input (a JSON flag's `-`) or of a file (`@PATH`). */
async function readInput(source: "-" | { path: string }, signal: AbortSignal): Promise<string> {
  if (source !== "-") return readFile(source.path, { encoding: "utf8", signal });
  // An unfinished read of stdin would keep the process from exiting after Ctrl-C.
  signal.addEventListener("abort", () => process.stdin.destroy(), { once: true });
  let text = "";
  for await (const chunk of process.stdin.setEncoding("utf8")) text += chunk;
  return text;
}

/** A process stream as the CLI writes it. */
interface ProcessOutput {
  write: Writer;
  /** Resolves once all that was written has left the process: a slow reader finds it in the pipe, whole. */
  flushed(): Promise<void>;
}

/**
 * A Writer over a process stream. Bun holds in the process what a pipe has no room for yet, and
 * process.exit drops it: `flushed` waits for it. A reader that went away (`tern ... | head`) ends
 * the CLI quietly; see writeFailed.
 */
function processOutput(stream: NodeJS.WriteStream, name: string, interrupted: AbortSignal): ProcessOutput {
  let pending = false;
  let gone = false;
  const failed = (e: unknown) => {
    // Nobody reads the errors (`2>&1 | true`): the CLI goes on, and its exit code still says how it went.
    if ((e as NodeJS.ErrnoException).code === "EPIPE" && name === "standard error") gone = true;
    else writeFailed(e, name, interrupted);
  };
  // Node reports a closed pipe as an error event, Bun by throwing from write().
  stream.on("error", failed);
  stream.on("drain", () => (pending = false));
  return {
    write: (text) => {
      if (gone) return;
      try {
        // Bun's writableNeedDrain and writableLength say 0 while it holds data back; write's false does not lie.
        if (!stream.write(text)) pending = true;
      } catch (e) {
        failed(e);
      }
    },
    flushed: () => (pending ? new Promise((resolve) => stream.once("drain", resolve)) : Promise.resolve()),
  };
}

/**
 * Exits once nobody reads the output (EPIPE): 0, what was asked for was taken, or 130 after Ctrl-C.
 * Any other failed write (a full disk, ENOSPC) exits 1 with one line, not a stack trace: the output is not whole.
 */
function writeFailed(e: unknown, name: string, interrupted: AbortSignal): void {
  const err = e as NodeJS.ErrnoException;
  if (err.code === "EPIPE") process.exit(interrupted.aborted ? ExitCode.interrupted : ExitCode.ok);
  if (name !== "standard error") process.stderr.write(`error: cannot write ${name}: ${err.message}\n`, () => process.exit(ExitCode.failure));
  else process.exit(ExitCode.failure);
}

/**
 * How long an interrupted CLI waits for its pipe's reader to take what it printed: a reader alive
 * but never reading (a pager stopped, a stuck script) held the exit until a second Ctrl-C.
 */
const INTERRUPTED_FLUSH_WAIT_MS = 3_000;

const interrupt = new AbortController();
process.once("SIGINT", () => interrupt.abort());
const stdout = processOutput(process.stdout, "standard output", interrupt.signal);
const cli = createCli({
  createTransport: (baseUrl) => createConnectTransport({ baseUrl, useBinaryFormat: true }),
  stdout: stdout.write,
  stderr: processOutput(process.stderr, "standard error", interrupt.signal).write,
  signal: interrupt.signal,
  interactive: Boolean(process.stdin.isTTY && process.stderr.isTTY),
  prompt,
  readInput,
  loadAdminDb: loadAdminDbBackend,
});
const code = await cli.run(process.argv.slice(2));
if (code === ExitCode.interrupted) {
  // What was written reaches a slow reader first, for a few seconds at most; a second Ctrl-C ends the wait, as SIGINT's default.
  await Promise.race([stdout.flushed(), sleep(INTERRUPTED_FLUSH_WAIT_MS)]);
  // Interrupted, the CLI is done: a read that cannot be cancelled (an @FIFO no writer ends) must not hold the exit.
  process.exit(code);
}
process.exitCode = code;
