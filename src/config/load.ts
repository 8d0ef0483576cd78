import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import type { z } from "zod";
import type { Env } from "./env";
import { Config, LogLevel } from "./schema";
import { checkClusterRules } from "./validate";
import { shown } from "../shown";

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
  if (env.TERN_DATABASE_URL) config.persistence.datastore = { postgres: { url: env.TERN_DATABASE_URL } };
  if (env.TERN_LOG_LEVEL) {
    const level = LogLevel.safeParse(env.TERN_LOG_LEVEL);
    if (!level.success) throw new ConfigError(`TERN_LOG_LEVEL: must be one of debug, info, warn, error`);
    config.log.level = level.data;
  }
  const broken = checkClusterRules(config);
  if (broken) throw new ConfigError(`${source}: ${broken}`);
  return config;
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

/**
 * The config path: `--config PATH` wins over TERN_CONFIG, then config/development.yaml. Any other
 * argument is refused: a misspelt `--confg b.yaml` would otherwise start the development cluster
 * on its default port and data dir, not the one meant.
 */
export function resolveConfigPath(argv: readonly string[], env: Env): string {
  const i = argv.findIndex((a) => a === "--config" || a.startsWith("--config="));
  const arg = argv[i];
  const value = arg === undefined ? undefined : arg.includes("=") ? arg.slice(arg.indexOf("=") + 1) : argv[i + 1];
  const rest = arg === undefined ? argv : argv.filter((_, j) => j !== i && (arg.includes("=") || j !== i + 1));
  if (rest.length) throw new ConfigError(`unknown argument ${shown(rest[0]!, { quote: true })}: the server takes only --config PATH (or TERN_CONFIG)`);
  if (arg === undefined) return env.TERN_CONFIG ?? "config/development.yaml";
  if (!value) throw new ConfigError("--config needs a path");
  return value;
}
