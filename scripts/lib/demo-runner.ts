/**
 * Printing and waiting for scripts/demo.ts: step headers, `$ tern ...` lines, bounded
 * waits with a clear message, and clean-up that also runs on Ctrl-C.
 */
import { rmSync } from "node:fs";
import { type ClusterProcess, runTern, type TernResult } from "./cluster-process";

/** A step that did not work; the demo stops with its message and exit code 1. */
export class DemoError extends Error {
  override name = "DemoError";
}

/** Quotes a word for display the way a user would type it in a POSIX shell. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

function indent(text: string): string {
  return text
    .trimEnd()
    .split("\n")
    .map((l) => `    ${l}`)
    .join("\n");
}

/** The demo's console and its resources; create one per run. */
export function createDemoRunner({ out = (t: string) => void process.stdout.write(t) } = {}) {
  let stepNo = 0;
  let current = "";
  let explained = false;
  const clusters: ClusterProcess[] = [];
  const dirs: string[] = [];

  /** Runs bin/tern with args, printed first as `$ tern ...`; output is shown indented. */
  async function tern(args: string[], { quiet = false, allowFailure = false } = {}): Promise<TernResult> {
    out(`$ tern ${args.map(shellQuote).join(" ")}\n`);
    const r = await runTern(args);
    if (!quiet && r.stdout.trim()) out(indent(r.stdout) + "\n");
    if (r.stderr.trim()) out(indent(r.stderr) + "\n");
    if (r.code !== 0 && !allowFailure) throw new DemoError(`tern exited with ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    return r;
  }

  /**
   * Runs bin/tern without printing, for polling: the JSON stdout parsed; undefined when the
   * server answered not_found; throws the error line otherwise.
   */
  async function ternJson<T>(args: string[]): Promise<T | undefined> {
    const r = await runTern([...args, "-o", "json"], { timeoutMs: 10_000 });
    if (r.code === 0) return JSON.parse(r.stdout) as T;
    if (r.stderr.startsWith("error: not_found:")) return undefined;
    throw new DemoError(r.stderr.trim().split("\n").at(-1) || `tern exited with ${r.code}`);
  }

  return {
    tern,
    ternJson,
    /** Prints `== N. title` and remembers it for the failure message. */
    step(title: string): void {
      current = `${++stepNo}. ${title}`;
      out(`\n== ${current}\n`);
    },
    /** A plain line of narration. */
    say(text: string): void {
      out(`${text}\n`);
    },
    /** The step that is running, for the failure message. */
    currentStep: () => current,
    /**
     * Polls check every interval until it returns true, at most timeoutMs; a string
     * result is the reason it is not there yet, shown if the wait runs out.
     */
    async waitFor(what: string, check: () => Promise<true | string>, { timeoutMs = 30_000, interval = 500 } = {}): Promise<void> {
      out(`… waiting up to ${timeoutMs / 1000}s for ${what}\n`);
      const began = Date.now();
      let why = "";
      for (let checks = 1; Date.now() - began < timeoutMs; checks++) {
        const result = await check().catch((e: Error) => e.message);
        // The time is mostly the checks' own tern processes: a reader must not take it for replication's lag (said once).
        if (result === true) {
          const why = explained ? "" : " (the checks run tern processes; replication's own lag: tern replication status)";
          explained = true;
          return void out(`  ok at check ${checks}, ${((Date.now() - began) / 1000).toFixed(1)}s in${why}\n`);
        }
        why = result;
        await Bun.sleep(interval);
      }
      throw new DemoError(`timed out after ${timeoutMs / 1000}s waiting for ${what}: ${why}`);
    },
    /** Registers what to stop and remove at the end. */
    own(resource: { cluster?: ClusterProcess; dir?: string }): void {
      if (resource.cluster) clusters.push(resource.cluster);
      if (resource.dir) dirs.push(resource.dir);
    },
    /** Stops every cluster and removes every temp dir; safe to call twice. */
    async cleanUp(): Promise<void> {
      const stopping = clusters.splice(0);
      await Promise.allSettled(stopping.map((c) => c.stop(5_000)));
      for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The runner's type. */
export type DemoRunner = ReturnType<typeof createDemoRunner>;
