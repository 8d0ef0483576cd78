import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import type { z } from "zod";
import type { Env } from "./env";
import { Config, LogLevel } from "./schema";
import { checkClusterRules } from "./validate";
import { shown } from "../shown";
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
    throw new ConfigError(`${source}: not valid YAML: ${(e as Error).message.split("\n")[0]}`);
  }
  const result = Config.safeParse(raw ?? {});
  if (!result.success) {
    const issue = reported(result.error.issues[0]!);
    const key = issue.path.map(String).join(".") || "(root)";
    throw new ConfigError(`${source}: ${key}: ${issue.message}`);
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
 * The issue to name. Where no form of a union matched (the datastore), the form the config
 * chose when its key is there and something inside it is wrong (`pglite.dataDir` missing,
 * say), else the union's own message, which lists the forms.
 */
function reported(issue: z.core.$ZodIssue): { path: PropertyKey[]; message: string } {
  if (issue.code !== "invalid_union") return issue;
  const inside = issue.errors.flat().find((i) => i.path.length >= 2);
  return inside ? { path: [...issue.path, ...inside.path], message: inside.message } : issue;
}

/** Reads and validates the config file at path. */
export function loadConfig(path: string, env: Env = {}): Config {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new ConfigError(`cannot read config file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
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
    given.set(flag, value);
  }
  const wait = given.get("--wait-for-database");
  return {
    configPath: given.get("--config") ?? env.TERN_CONFIG ?? "config/development.yaml",
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
  if (ms > 2 ** 31 - 1) throw new ConfigError(`${source}: ${text} is longer than the longest wait, 2147483647 ms (about 24 days)`);
  return ms;
}

/** Sets connectWaitMs; a PGlite datastore has no server to wait for, and says so. */
function setDatabaseWait(config: Config, ms: number, source: string): void {
  const store = config.persistence.datastore;
  if (!("postgres" in store)) throw new ConfigError(`${source}: the datastore is PGlite (persistence.datastore.pglite), which has no database server to wait for`);
  store.postgres.connectWaitMs = ms;
}
