import type { FlagSpec, ParsedArgs } from "./args";
import { UsageError } from "./errors";

/** Reads the text of `-` (standard input) or a file path, giving up when signal aborts; main.ts gives the real one. */
export type ReadInput = (source: "-" | { path: string }, signal: AbortSignal) => Promise<string>;

/** The paths that name standard input itself: `@/dev/stdin` reads the same pipe or terminal as `-`. */
const STDIN_PATHS = ["/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"];

/** One JSON flag's value to read: its `-` or `@PATH`, and where it sits in args. */
interface Source {
  flag: string;
  value: string;
  values: string[];
  index: number;
}

/**
 * Replaces each JSON flag's `-` with standard input and `@PATH` with the file's text, in place.
 * Neither is JSON, so no JSON value is taken for one; a payload past the 128 KiB the kernel lets
 * one argument hold (MAX_ARG_STRLEN) can only come this way. A byte-order mark an editor put at
 * a file's start is dropped: JSON has none (RFC 8259), and JSON.parse refuses it.
 */
export async function readJsonSources(args: ParsedArgs, flags: readonly FlagSpec[], read: ReadInput, signal: AbortSignal): Promise<void> {
  const sources = flags.filter((f) => f.valueName === "JSON").flatMap((f) => {
    const values = args.values.get(f.name) ?? [];
    return values.flatMap((value, index) => (value === "-" || value.startsWith("@") ? [{ flag: f.name, value, values, index }] : []));
  });
  checkSources(sources);
  for (const { flag, value, values, index } of sources) {
    const source = value === "-" ? "-" : { path: value.slice(1) };
    const reading = read(source, signal).catch((e: unknown) => {
      throw new UsageError(`--${flag} ${value}: cannot read ${value === "-" ? "standard input" : value.slice(1)}: ${(e as Error).message.replace(/, open '.*'$/, "")}`);
    });
    // Ctrl-C while a terminal or a pipe that never ends is read: the CLI ends now, 130, not at the input's end.
    const text = (await Promise.race([reading, interrupted(signal)])).replace(/^\uFEFF/, "");
    // Said as such, not as JSON's "Unexpected EOF": a pipe whose producer failed, or a file left empty.
    if (text.trim() === "") throw new UsageError(`--${flag} ${value}: ${value === "-" ? "standard input" : value.slice(1)} is empty`);
    values[index] = text;
  }
}

/** Refuses, before anything is read, an `@` with no path and a second reader of standard input (the first would take it all). */
function checkSources(sources: readonly Source[]): void {
  let stdin: Source | undefined;
  for (const source of sources) {
    if (source.value === "@") throw new UsageError(`--${source.flag} @ names no file: write @PATH`);
    if (source.value !== "-" && !STDIN_PATHS.includes(source.value.slice(1))) continue;
    if (stdin) throw new UsageError(`--${source.flag} ${source.value} and --${stdin.flag} ${stdin.value} both read standard input; give one of them @FILE`);
    stdin = source;
  }
}

/** Rejects with an AbortError once signal aborts. */
function interrupted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    const abort = () => reject(new DOMException("interrupted while reading input", "AbortError"));
    if (signal.aborted) abort();
    else signal.addEventListener("abort", abort, { once: true });
  });
}
