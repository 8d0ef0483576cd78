import { existsSync, readFileSync, readdirSync, renameSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/**
 * Written to a PGlite data dir before its database is created, removed once PGlite has made
 * it. PGlite writes its initdb's files into the dir one by one over a few hundred ms, so a
 * process killed meanwhile leaves some without PG_VERSION (refused by checkDataDir as someone
 * else's files) or with it but incomplete (which PGlite would take for a database). Holds the
 * names that were in the dir before, which are not PGlite's to remove.
 */
export const FIRST_START_MARKER = "tern.initializing";

/** Whether a name in a data dir is tern's own (its lock, the marker), not the database's. */
const own = (f: string) => f.startsWith("tern.");

/** What prepareFirstStart found. */
export interface FirstStart {
  /** Files of a first start that was interrupted, removed to make the database again. */
  removed: string[];
  /** Call once PGlite has created the database: the dir holds a whole one from here. */
  done(): void;
}

/**
 * Before PGlite opens dataDir (its lock held): undefined when the dir holds a database made
 * whole. Else marks the first start under way; a marker found from an interrupted one means
 * the dir's other files are that start's half-made database, and they are removed first.
 */
export function prepareFirstStart(dataDir: string): FirstStart | undefined {
  const marker = join(dataDir, FIRST_START_MARKER);
  const entries = readdirSync(dataDir);
  let removed: string[] = [];
  if (entries.includes(FIRST_START_MARKER)) {
    const before = new Set(readFileSync(marker, "utf8").split("\n").filter(Boolean));
    removed = entries.filter((f) => !own(f) && !before.has(f));
    for (const f of removed) rmSync(join(dataDir, f), { recursive: true, force: true });
  } else if (entries.includes("PG_VERSION")) {
    return undefined;
  } else {
    // Renamed into place whole: a marker cut short would name too few files to keep.
    writeFileSync(`${marker}.tmp`, entries.filter((f) => !own(f)).join("\n"));
    renameSync(`${marker}.tmp`, marker);
  }
  return {
    removed,
    done: () => {
      if (existsSync(marker)) unlinkSync(marker);
    },
  };
}
