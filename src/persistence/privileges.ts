import { getTableName, is, sql } from "drizzle-orm";
import { PgTable } from "drizzle-orm/pg-core";
import type { Db } from "./database";
import { rowsOf } from "./raw-statements";
import * as schema from "./schema";

/** What tern's statements do to each of its tables. */
const NEEDED = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/** tern's tables (schema.ts), as its statements name them (found through the search_path). */
const TABLES = Object.values(schema).flatMap((t) => (is(t, PgTable) ? [getTableName(t)] : []));

/**
 * Refuses a database whose role may not read and write each of tern's tables, naming them: a
 * role granted some tables only started, and answered every request that reached one of the
 * others INTERNAL (42501: permission denied for table ...).
 */
export async function checkPrivileges(db: Db): Promise<void> {
  const rows = rowsOf(await db.execute(sql`
    select t.name, p.privilege, current_user as role
    from jsonb_array_elements_text(${JSON.stringify(TABLES)}::jsonb) with ordinality t(name, i)
    cross join jsonb_array_elements_text(${JSON.stringify(NEEDED)}::jsonb) with ordinality p(privilege, j)
    where not has_table_privilege(to_regclass(t.name), p.privilege) order by t.i, p.j`)) as { name: string; privilege: string; role: string }[];
  if (rows.length === 0) return;
  const lacking = new Map<string, string[]>();
  for (const r of rows) lacking.set(r.name, [...(lacking.get(r.name) ?? []), r.privilege]);
  const role = rows[0]!.role;
  throw new Error(
    `the database role ${role} lacks privileges tern needs on its tables: ${[...lacking].map(([t, ps]) => `${ps.join(", ")} on ${t}`).join("; ")}; ` +
      `grant them (GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ... TO ${role})`,
  );
}
