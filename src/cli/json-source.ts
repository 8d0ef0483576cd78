import type { FlagSpec, ParsedArgs } from "./args";
import { UsageError } from "./errors";

/** Reads the text of `-` (standard input) or a file path, giving up when signal aborts; main.ts gives the real one. */
export type ReadInput = (source: "-" | { path: string }, signal: AbortSignal) => Promise<string>;

/**
 * Replaces each JSON flag's `-` with standard input and `@PATH` with the file's text, in place.
 * Neither is JSON, so no JSON value is taken for one; a payload past the 128 KiB the kernel lets
 * one argument hold (MAX_ARG_STRLEN) can only come this way.
 */
export async function readJsonSources(args: ParsedArgs, flags: readonly FlagSpec[], read: ReadInput, signal: AbortSignal): Promise<void> {
  let stdinFlag: string | undefined;
  for (const flag of flags.filter((f) => f.valueName === "JSON")) {
    const values = args.values.get(flag.name);
    if (!values) continue;
    for (const [i, value] of values.entries()) {
      if (value !== "-" && !value.startsWith("@")) continue;
      if (value === "-") {
        if (stdinFlag !== undefined) throw new UsageError(`--${flag.name} - and --${stdinFlag} - both read standard input; give one of them @FILE`);
        stdinFlag = flag.name;
      }
      if (value === "@") throw new UsageError(`--${flag.name} @ names no file: write @PATH`);
      const source = value === "-" ? "-" : { path: value.slice(1) };
      const reading = read(source, signal).catch((e: unknown) => {
        throw new UsageError(`--${flag.name} ${value}: cannot read ${value === "-" ? "standard input" : value.slice(1)}: ${(e as Error).message.replace(/, open '.*'$/, "")}`);
      });
      // Ctrl-C while a terminal or a pipe that never ends is read: the CLI ends now, 130, not at the input's end.
      values[i] = await Promise.race([reading, interrupted(signal)]);
      // Said as such, not as JSON's "Unexpected EOF": a pipe whose producer failed, or a file left empty.
      if (values[i]!.trim() === "") throw new UsageError(`--${flag.name} ${value}: ${value === "-" ? "standard input" : value.slice(1)} is empty`);
    }
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
