import { UsageError } from "./errors";

/** One flag a command accepts. */
export interface FlagSpec {
  /** Long name without dashes, e.g. "namespace". */
  name: string;
  /** One-letter alias without the dash, e.g. "n". */
  alias?: string;
  /** Booleans need no value (`--global`); `--global=false` and `--global false` also work. */
  kind: "string" | "boolean";
  /** May be given several times; all values are kept in order. */
  repeated?: boolean;
  /** Placeholder shown in help, e.g. "NS". */
  valueName?: string;
  /** One line for --help. */
  description: string;
  /** Shown in help as the default; the command applies it. */
  defaultText?: string;
  /** The only values taken (in any case): `-ojson` is then this flag with its value, never another flag's value. */
  choices?: readonly string[];
}

/** The result of parsing: flag values by long name, and the positionals in order. */
export interface ParsedArgs {
  /** Every value of each string flag, in the order given. */
  values: Map<string, string[]>;
  /** Boolean flags that were given. */
  booleans: Map<string, boolean>;
  positionals: string[];
}

/** A long flag name as written (`frontend_address`) in the spelling specs use (`frontend-address`). */
function canonicalName(name: string): string {
  return name.replaceAll("_", "-");
}

/**
 * Finds the spec named by a token's flag part, or undefined. Besides `--name` and `-n`,
 * accepts tctl's spellings: underscores for dashes (`--frontend_address`) and one dash
 * before a long name (`-address`), as Go's flag package and urfave/cli do.
 */
export function findFlag(specs: readonly FlagSpec[], token: string): FlagSpec | undefined {
  if (token.startsWith("--")) return specs.find((s) => s.name === canonicalName(token.slice(2)));
  if (!token.startsWith("-")) return undefined;
  if (token.length === 2) return specs.find((s) => s.alias === token.slice(1));
  return specs.find((s) => s.name === canonicalName(token.slice(1)));
}

/** True for the words a boolean flag takes as a separate value (`--enable_connection false`). */
export function isBooleanWord(token: string | undefined): boolean {
  return token !== undefined && /^(true|false)$/i.test(token);
}

/** Splits `--flag=value` into its flag and inline value. */
export function splitFlagToken(token: string): { flag: string; inline?: string } {
  const eq = token.indexOf("=");
  return eq < 0 ? { flag: token } : { flag: token.slice(0, eq), inline: token.slice(eq + 1) };
}

/**
 * Rewrites a short flag with its value attached, as getopt allows (`-ojson`, `-nprod`), to the
 * `-o=json` form; any other token is returned as is. A one-dash long name (`-address`) wins.
 */
export function attachShortValue(token: string, specs: readonly FlagSpec[]): string {
  if (token.startsWith("--") || token.length < 3 || token[2] === "=" || !isFlagToken(token)) return token;
  if (findFlag(specs, splitFlagToken(token).flag)) return token;
  const spec = specs.find((s) => s.alias === token[1]);
  return spec?.kind === "string" ? `-${token[1]}=${token.slice(2)}` : token;
}

/**
 * True for a short flag with one of its choices attached (`-ojson`): the value left out before it
 * (`-n -ojson`). Any other attached word (`--reason -oops`, `-w -order-1`) may be a value.
 */
function isChoiceAttached(token: string, specs: readonly FlagSpec[]): boolean {
  const spec = specs.find((s) => s.alias === token[1]);
  return token[0] === "-" && spec?.choices?.includes(token.slice(2).toLowerCase()) === true;
}

/** True for tokens that look like flags; "-" alone and negative numbers are values. */
export function isFlagToken(token: string): boolean {
  return token.startsWith("-") && token !== "-" && !/^-\d/.test(token);
}

function parseBoolean(flag: string, text: string): boolean {
  const t = text.toLowerCase();
  if (t === "true" || t === "1" || t === "yes") return true;
  if (t === "false" || t === "0" || t === "no") return false;
  throw new UsageError(`${flag} takes true or false, got "${text}"`);
}

/**
 * Parses argv against specs. Supports `--flag value`, `--flag=value`, `-f value`,
 * `-f=value`, `-fvalue`, repeated flags, booleans (`--global`, `--global=false`, `--global false`;
 * only a literal true/false is taken as the value) and `--` (everything after it is
 * positional). Unknown flags are usage errors.
 */
export function parseArgs(argv: readonly string[], specs: readonly FlagSpec[]): ParsedArgs {
  const parsed: ParsedArgs = { values: new Map(), booleans: new Map(), positionals: [] };
  for (let i = 0; i < argv.length; i++) {
    const token = attachShortValue(argv[i]!, specs);
    if (token === "--") {
      parsed.positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!isFlagToken(token)) {
      parsed.positionals.push(token);
      continue;
    }
    const { flag, inline } = splitFlagToken(token);
    const spec = findFlag(specs, flag);
    if (!spec) throw new UsageError(`unknown flag ${flag}`);
    if (spec.kind === "boolean") {
      let text = inline;
      if (text === undefined && isBooleanWord(argv[i + 1])) text = argv[++i]!;
      parsed.booleans.set(spec.name, text === undefined ? true : parseBoolean(flag, text));
      continue;
    }
    let value = inline;
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
      value = argv[++i]!;
      // `-n --retention 1d`: the value left out, the next flag taken for it and its own value stray.
      if (isFlagToken(value) && (findFlag(specs, splitFlagToken(value).flag) || isChoiceAttached(value, specs))) {
        throw new UsageError(`${flag} needs a value (the next word, ${value}, is a flag; for a value that starts with -, write ${flag}=VALUE)`);
      }
    }
    const list = spec.repeated ? (parsed.values.get(spec.name) ?? []) : [];
    list.push(value);
    parsed.values.set(spec.name, list);
  }
  return parsed;
}

/** The last value of a string flag, or undefined when it was not given. */
export function getString(args: ParsedArgs, name: string): string | undefined {
  const list = args.values.get(name);
  return list ? list[list.length - 1] : undefined;
}

/** Every value of a repeated flag (empty when not given). */
export function getStrings(args: ParsedArgs, name: string): string[] {
  return args.values.get(name) ?? [];
}

/** A boolean flag's value; false when not given. */
export function getBoolean(args: ParsedArgs, name: string): boolean {
  return args.booleans.get(name) ?? false;
}

/** True when the flag was given at all (string or boolean). */
export function hasFlag(args: ParsedArgs, name: string): boolean {
  return args.values.has(name) || args.booleans.has(name);
}

/** A string flag that must be present and non-empty. */
export function requireString(args: ParsedArgs, name: string): string {
  const value = getString(args, name);
  if (value === undefined || value === "") throw new UsageError(`--${name} is required`);
  return value;
}

/** Parses repeated `k=v` values into a map; a value may itself contain "=". */
export function parseKeyValues(values: readonly string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of values) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new UsageError(`--${flag} takes KEY=VALUE, got "${item}"`);
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}
