import type { Database } from "./database";
import { checkEncoding } from "./encoding";
import { migrateSchema } from "./migrate";
import { checkPrivileges } from "./privileges";

/**
 * What a server's start and `tern admin db migrate` do to a database: refuse one whose encoding
 * cannot hold tern's text (before anything is made in it), apply the pending migrations (told to
 * applied), then refuse a role that may not read and write each of tern's tables. The command
 * ran the migrations alone: it made tern's tables in a LATIN1 database, and said a database
 * ready that the role could not write.
 */
export async function migrateChecked(database: Database, migrationsFolder: string, applied: (tags: string[]) => void = () => {}): Promise<string[]> {
  await checkEncoding(database.db);
  const tags = await migrateSchema(database, migrationsFolder);
  if (tags.length) applied(tags);
  await checkPrivileges(database.db);
  return tags;
}
