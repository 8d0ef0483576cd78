import { sql } from "drizzle-orm";
import type { Db } from "./database";
import { rowsOf } from "./raw-statements";

/**
 * Encodings tern's text keeps whole: UTF8, and SQL_ASCII, where PostgreSQL stores the bytes it
 * is sent unconverted (the driver sends UTF-8).
 */
const WHOLE = new Set(["UTF8", "SQL_ASCII"]);

/**
 * Refuses a database whose encoding cannot hold all of Unicode (LATIN1, WIN1252, EUC_JP, ...),
 * before anything is made in it. On one, a workflow id, signal name or payload outside the
 * encoding was refused, and a peer's replicated here went to the DLQ (22P05: character ... has
 * no equivalent in encoding "LATIN1"), its run left behind for good.
 */
export async function checkEncoding(db: Db): Promise<void> {
  const [row] = rowsOf(await db.execute(sql`select current_setting('server_encoding') as encoding, current_database() as name`));
  const encoding = String(row?.encoding);
  if (WHOLE.has(encoding)) return;
  throw new Error(
    `the database ${String(row?.name)} is encoded ${encoding}, which cannot hold all the text tern stores (workflow ids, names, ` +
      `payloads of any language, and its peers'); tern needs a UTF8 database (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)`,
  );
}
