import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import type { z } from "zod";
import type { Env } from "./env";
import { Config, LogLevel } from "./schema";
import { checkClusterRules } from "./validate";
import { pastBound } from "./bounds";
import { shown } from "../shown";
import { MAX_TIMER_MS } from "../sleep";
import { parseDurationNanos } from "../cli/duration";

/** A config that cannot be used; the message is one line naming the key and the rule. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Parses YAML text into a validated Config, applying env overrides. */
export function parseConfig(text: string, env: Env = {}, source = "config"): Config {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    // The first line names the line and column; the excerpt after it does not fit on one line.
    throw new ConfigError(`${source}: not valid YAML: ${(e as Error).message.split("\n")[0]!.replace(/:$/, "")}`);
  }
  if (raw === null || raw === undefined) throw new ConfigError(`${source}: the file is empty; it needs at least clusterMetadata (README, "Configuration")`);
  const result = Config.safeParse(raw, { error: issueMessage });
  if (!result.success) {
    const issue = reported(ownBound(result.error.issues));
    const path = issue.code === "unrecognized_keys" ? [...issue.path, issue.keys[0]!] : issue.path;
    throw new ConfigError(`${source}: ${path.map(String).join(".") || "(root)"}: ${issue.message}`);
  }
  const config = result.data;
  if (env.TERN_DATABASE_URL) overrideDatabaseUrl(config, env.TERN_DATABASE_URL);
  if (env.TERN_LOG_LEVEL) {
    const level = LogLevel.safeParse(env.TERN_LOG_LEVEL);
    if (!level.success) throw new ConfigError(`TERN_LOG_LEVEL: must be one of debug, info, warn, error`);
    config.log.level = level.data;
  }
  if (env.TERN_DATABASE_WAIT) setDatabaseWait(config, parseWait(env.TERN_DATABASE_WAIT, "TERN_DATABASE_WAIT"), "TERN_DATABASE_WAIT");
  const broken = checkClusterRules(config);
  if (broken) throw new ConfigError(`${source}: ${broken}`);
  return config;
}

/**
 * TERN_DATABASE_URL in place of the file's datastore. Only the URL: a postgres block's other
 * settings (maxConnections, the timeouts, connectWaitMs) stay, so a URL kept out of the file
 * (a secret) does not silently drop the file's tuning with it.
 */
function overrideDatabaseUrl(config: Config, url: string): void {
  const store = config.persistence.datastore;
  config.persistence.datastore = { postgres: { ...("postgres" in store && store.postgres), url } };
}

/**
 * Zod's words where they do not say what to write: a key left out ("expected object, received
 * undefined") is required, one given nothing has no value; a key the schema lacks (a typo,
 * `persistance`) is listed with the keys its place takes; a number past a bound, or not whole where
 * a whole one is wanted, is named with the bound (zod's "Too small: expected number to be >=1" named
 * neither the value given nor what it is). Others keep zod's message (undefined).
 */
function issueMessage(issue: z.core.$ZodRawIssue): string | undefined {
  if (issue.code === "invalid_type" && issue.input === undefined) return `is required (${issue.expected})`;
  if ((issue.code === "too_small" || issue.code === "too_big") && typeof issue.input === "number") {
    const upper = issue.code === "too_big";
    return pastBound(issue.input, { bound: Number(upper ? issue.maximum : issue.minimum), upper, inclusive: issue.inclusive !== false });
  }
  if (issue.code === "too_small" && issue.origin === "string" && issue.input === "") return "is empty (expected a string of at least 1 character)";
  if (issue.code === "invalid_type" && issue.expected === "int" && typeof issue.input === "number") return `${issue.input} is not a whole number`;
  // `persistence:` with every line under it commented out.
  if (issue.code === "invalid_type" && issue.input === null) return `has no value (expected ${issue.expected})`;
  if (issue.code === "unrecognized_keys") {
    const shape = (issue.inst as z.core.$ZodObject | undefined)?._zod.def.shape ?? {};
    return `unknown key; the keys here are ${Object.keys(shape).join(", ")}`;
  }
  return undefined;
}

/** A bound zod checks on every integer, before the key's own: 1e21 for a key of at most 1000 was "above the most, 9007199254740991". */
const safeRange = (i: z.core.$ZodIssue) => (i.code === "too_big" && i.maximum === Number.MAX_SAFE_INTEGER) || (i.code === "too_small" && i.minimum === -Number.MAX_SAFE_INTEGER);

/** The first issue, or where that is the safe integer range, the key's own bound on the same side. */
function ownBound(issues: z.core.$ZodIssue[]): z.core.$ZodIssue {
  const first = issues[0]!;
  if (!safeRange(first)) return first;
  const at = first.path.join(".");
  return issues.find((i) => i.code === first.code && !safeRange(i) && i.path.join(".") === at) ?? first;
}

/**
 * The issue to name. Where no form of a union matched (the datastore), the form the config
 * chose when its key is there and something inside it is wrong (`pglite.dataDir` missing,
 * say), else the union's own message, which lists the forms.
 */
function reported(issue: z.core.$ZodIssue): z.core.$ZodIssue {
  if (issue.code !== "invalid_union") return issue;
  const inside = issue.errors.flat().find((i) => i.path.length >= 2);
  return inside ? { ...inside, path: [...issue.path, ...inside.path] } : issue;
}

/** The config path when neither --config nor TERN_CONFIG names one. */
const DEFAULT_CONFIG_PATH = "config/development.yaml";

/** Why a config file could not be read, in words; the code follows them. */
const READ_FAILURES: Record<string, string> = {
  ENOENT: "no such file",
  EACCES: "permission denied",
  EISDIR: "it is a directory",
  ENOTDIR: "a directory on its path is a file",
};

/** Reads and validates the config file at path. */
export function loadConfig(path: string, env: Env = {}): Config {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code ? `${READ_FAILURES[code] ?? (e as Error).message} (${code})` : (e as Error).message;
    // Which setting chose the path: a server started from another directory finds no default there.
    const from = env.TERN_CONFIG === path ? "TERN_CONFIG" : path === DEFAULT_CONFIG_PATH ? "the default; --config PATH or TERN_CONFIG names another" : "--config";
    // A relative path is the start directory's: named whole, as a start elsewhere reads another file.
    const whole = isAbsolute(path) ? "" : `; the start directory's: ${resolve(path)}`;
    throw new ConfigError(`cannot read config file ${path} (${from}${whole}): ${why}`);
  }
  return parseConfig(text, env, path);
}

/** What the server's command line and environment say. */
export interface ServerArgs {
  configPath: string;
  /** --wait-for-database, ms: overrides the config's connectWaitMs and TERN_DATABASE_WAIT. */
  databaseWaitMs?: number;
}

/** The server's flags, each as `--flag VALUE` or `--flag=VALUE`. */
const SERVER_FLAGS = ["--config", "--wait-for-database"] as const;

/**
 * The server's arguments: `--config PATH` (wins over TERN_CONFIG, then config/development.yaml)
 * and `--wait-for-database DURATION`. Any other argument is refused: a misspelt
 * `--confg b.yaml` would otherwise start the development cluster on its default port and data
 * dir, not the one meant.
 */
export function parseServerArgs(argv: readonly string[], env: Env): ServerArgs {
  const given = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const flag = SERVER_FLAGS.find((f) => arg === f || arg.startsWith(`${f}=`));
    if (!flag) throw new ConfigError(`unknown argument ${shown(arg, { quote: true })}: the server takes only --config PATH (or TERN_CONFIG) and --wait-for-database DURATION (or TERN_DATABASE_WAIT)`);
    const value = arg === flag ? argv[++i] : arg.slice(flag.length + 1);
    if (!value) throw new ConfigError(flag === "--config" ? "--config needs a path" : `${flag} needs a duration (e.g. 30s, 2m)`);
    // `--config a.yaml ... --config b.yaml` (a line edited in place): which one was meant is not ours to guess.
    if (given.has(flag)) throw new ConfigError(`${flag} given twice (${shown(given.get(flag)!, { quote: true })} and ${shown(value, { quote: true })}): give it once`);
    given.set(flag, value);
  }
  const wait = given.get("--wait-for-database");
  return {
    configPath: given.get("--config") ?? env.TERN_CONFIG ?? DEFAULT_CONFIG_PATH,
    ...(wait !== undefined && { databaseWaitMs: parseWait(wait, "--wait-for-database") }),
  };
}

/** The config path of parseServerArgs, for commands that take only --config. */
export function resolveConfigPath(argv: readonly string[], env: Env): string {
  return parseServerArgs(argv, env).configPath;
}

/** Reads the config the server's arguments and environment name, with their overrides. */
export function loadServerConfig(argv: readonly string[], env: Env): Config {
  const args = parseServerArgs(argv, env);
  const config = loadConfig(args.configPath, env);
  if (args.databaseWaitMs !== undefined) setDatabaseWait(config, args.databaseWaitMs, "--wait-for-database");
  return config;
}

/** A wait given as a duration (`30s`, `2m`, `0`), in ms, within what a timer can wait. */
function parseWait(text: string, source: string): number {
  let ms: number;
  try {
    ms = Number(parseDurationNanos(text, "wait-for-database") / 1_000_000n);
  } catch {
    throw new ConfigError(`${source}: invalid duration ${shown(text, { quote: true })} (use e.g. 30s, 2m, 500ms; 0 for none)`);
  }
  if (ms > MAX_TIMER_MS) throw new ConfigError(`${source}: ${text} is longer than the longest wait, 2147483647 ms (about 24 days)`);
  return ms;
}

/** Sets connectWaitMs; a PGlite datastore has no server to wait for, and says so. */
function setDatabaseWait(config: Config, ms: number, source: string): void {
  const store = config.persistence.datastore;
  if (!("postgres" in store)) throw new ConfigError(`${source}: the datastore is PGlite (persistence.datastore.pglite), which has no database server to wait for`);
  store.postgres.connectWaitMs = ms;
}
