import { sql, type SQL } from "drizzle-orm";
import { namespaces } from "../persistence/schema";

/** A namespace row whose clusters list holds every one of names (jsonb containment: one list holding them all). */
export function listsClusters(...names: string[]): SQL {
  return sql`${namespaces.clusters} @> ${JSON.stringify(names)}::jsonb`;
}
