import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The drizzle/ migrations folder nearest above `from` (an entry's import.meta.url).
 * Walking up lets one rule serve the sources (src/entry/x.ts, src/main.ts) and the
 * bundles (dist/<runtime>/tern.mjs, beside the copy in dist/drizzle).
 */
export function findMigrationsFolder(from: string | URL): string {
  const start = dirname(fileURLToPath(from));
  for (let dir = start; ; dir = dirname(dir)) {
    const candidate = join(dir, "drizzle");
    if (existsSync(join(candidate, "meta", "_journal.json"))) return candidate;
    if (dirname(dir) === dir) throw new Error(`no drizzle/ migrations folder in ${start} or above`);
  }
}
