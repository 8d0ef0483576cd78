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
function writer(stream: NodeJS.WriteStream): (text: string) => void {
  // Node reports a closed pipe as an error event, Bun by throwing from write().
  stream.on("error", readerGone);
  return (text) => {
    try {
      stream.write(text);
    } catch (e) {
      readerGone(e);
    }
  };
}

/** Exits 0 once nobody reads the output (EPIPE): what was asked for was taken. Other errors go on. */
function readerGone(e: unknown): void {
  if ((e as NodeJS.ErrnoException).code === "EPIPE") process.exit(0);
  throw e;
}

async function main(): Promise<number> {
  const interrupt = new AbortController();
  process.once("SIGINT", () => interrupt.abort());
  const cli = createCli({
    createTransport: (baseUrl) => createConnectTransport({ baseUrl, useBinaryFormat: true }),
    stdout: writer(process.stdout),
    stderr: writer(process.stderr),
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
