// Composition root of the CLI: the only place that touches process, the terminal and the network stack.
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline/promises";
import { createConnectTransport } from "@connectrpc/connect-web";
import { loadAdminDbBackend } from "./admin-db-backend";
import { createCli } from "./cli";
import { ExitCode } from "./errors";

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

/** A Writer over a process stream; a reader that went away (`tern ... | head`) ends the CLI quietly. */
function writer(stream: NodeJS.WriteStream, name: string): (text: string) => void {
  const failed = (e: unknown) => writeFailed(e, name);
  // Node reports a closed pipe as an error event, Bun by throwing from write().
  stream.on("error", failed);
  return (text) => {
    try {
      stream.write(text);
    } catch (e) {
      failed(e);
    }
  };
}

/**
 * Exits 0 once nobody reads the output (EPIPE): what was asked for was taken. Any other failed
 * write (a full disk, ENOSPC) exits 1 with one line, not a stack trace: the output is not whole.
 */
function writeFailed(e: unknown, name: string): void {
  const err = e as NodeJS.ErrnoException;
  if (err.code === "EPIPE") process.exit(0);
  if (name !== "standard error") process.stderr.write(`error: cannot write ${name}: ${err.message}\n`, () => process.exit(ExitCode.failure));
  else process.exit(ExitCode.failure);
}

async function main(): Promise<number> {
  const interrupt = new AbortController();
  process.once("SIGINT", () => interrupt.abort());
  const cli = createCli({
    createTransport: (baseUrl) => createConnectTransport({ baseUrl, useBinaryFormat: true }),
    stdout: writer(process.stdout, "standard output"),
    stderr: writer(process.stderr, "standard error"),
    signal: interrupt.signal,
    interactive: Boolean(process.stdin.isTTY && process.stderr.isTTY),
    prompt,
    readInput,
    loadAdminDb: loadAdminDbBackend,
  });
  return cli.run(process.argv.slice(2));
}

const code = await main();
// Interrupted, the CLI is done: a read that cannot be cancelled (an @FIFO no writer ends) must not hold the exit.
if (code === ExitCode.interrupted) process.exit(code);
process.exitCode = code;
