/** The one module that reads the process environment (STYLE.md). */
export interface Env {
  /** Path of the YAML config file. */
  TERN_CONFIG?: string;
  /** PostgreSQL URL that overrides persistence.datastore. */
  TERN_DATABASE_URL?: string;
  /** Overrides log.level. */
  TERN_LOG_LEVEL?: string;
  /** A duration (30s, 2m) that overrides persistence.datastore.postgres.connectWaitMs. */
  TERN_DATABASE_WAIT?: string;
}

/** Reads tern's variables from the environment of whichever runtime runs us. */
export function readEnv(): Env {
  const source: Record<string, string | undefined> =
    typeof process !== "undefined" && process.env ? process.env : {};
  const pick = (k: string) => (source[k] && source[k]!.length > 0 ? source[k] : undefined);
  return {
    TERN_CONFIG: pick("TERN_CONFIG"),
    TERN_DATABASE_URL: pick("TERN_DATABASE_URL"),
    TERN_LOG_LEVEL: pick("TERN_LOG_LEVEL"),
    TERN_DATABASE_WAIT: pick("TERN_DATABASE_WAIT"),
  };
}
