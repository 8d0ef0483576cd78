import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { migrationsFolder } from "./server";

/** A copy of drizzle/ whose journal ends at the migration tagged last: an older build's migrations. */
export function migrationsThrough(last: string): { folder: string; remove(): void } {
  const folder = mkdtempSync(join(tmpdir(), "tern-old-migrations-"));
  cpSync(migrationsFolder, folder, { recursive: true });
  const path = join(folder, "meta", "_journal.json");
  const journal = JSON.parse(readFileSync(path, "utf8")) as { entries: { tag: string }[] };
  const at = journal.entries.findIndex((e) => e.tag === last);
  if (at < 0) throw new Error(`no migration ${last} in ${migrationsFolder}`);
  writeFileSync(path, JSON.stringify({ ...journal, entries: journal.entries.slice(0, at + 1) }));
  return { folder, remove: () => rmSync(folder, { recursive: true, force: true }) };
}
