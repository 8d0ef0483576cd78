import { eq, inArray } from "drizzle-orm";
import { notFound } from "../errors";
import type { Db, Tx } from "../persistence/database";
import { clusterMetadata } from "../persistence/schema";
import type { CurrentCluster } from "./bootstrap";
import { shown } from "../shown";

/** Known clusters: this one plus, later, connected remotes. */
export interface ClusterDirectory {
  current(): CurrentCluster;
  /** A known cluster by name; NOT_FOUND naming it otherwise. */
  require(name: string): Promise<{ clusterName: string; initialFailoverVersion: number; enableConnection?: boolean }>;
  list(): Promise<(typeof clusterMetadata.$inferSelect)[]>;
  /**
   * Inside tx: locks the named remote clusters' rows, shared, until tx ends, so that a remove of
   * one waits for tx and then sees what it wrote; NOT_FOUND naming one no longer known.
   */
  hold(tx: Tx, names: string[]): Promise<void>;
}

/** A connected (remote) cluster's metadata row, by name; undefined for this cluster or one not connected. */
export async function remoteOf(clusters: ClusterDirectory, name: string) {
  return (await clusters.list()).find((c) => c.clusterName === name && !c.isCurrent);
}

/** NOT_FOUND for a cluster name this cluster does not know, naming those it knows (a typo's fix is among them). */
export async function unknownCluster(db: Db | Tx, current: CurrentCluster, name: string): Promise<Error> {
  const known = await db.select({ name: clusterMetadata.clusterName }).from(clusterMetadata).orderBy(clusterMetadata.clusterName);
  const names = known.length ? known.map((k) => k.name).join(", ") : current.clusterName;
  return notFound(`cluster ${shown(name)} is not known to cluster ${current.clusterName} (known: ${names})`);
}

/**
 * Locks the rows of the clusters among names that are known here until tx ends, shared with any
 * change but a remove (remote-clusters.ts takes the row for update): a remove of one waits for
 * tx and then sees what it wrote, and tx, begun after the remove, finds it gone. The names found.
 */
export async function holdKnown(tx: Tx, names: string[]): Promise<string[]> {
  if (!names.length) return [];
  const rows = await tx.select({ name: clusterMetadata.clusterName }).from(clusterMetadata).where(inArray(clusterMetadata.clusterName, names)).for("key share");
  return rows.map((r) => r.name);
}

/** Reads cluster rows from cluster_metadata; the current cluster is fixed at boot. */
export function createClusterDirectory(db: Db, current: CurrentCluster): ClusterDirectory {
  return {
    current: () => current,
    async require(name) {
      if (name === current.clusterName) return current;
      const [row] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.clusterName, name));
      if (!row) throw await unknownCluster(db, current, name);
      return row;
    },
    list: () => db.select().from(clusterMetadata).orderBy(clusterMetadata.clusterName),
    async hold(tx, names) {
      const remotes = names.filter((n) => n !== current.clusterName);
      const held = await holdKnown(tx, remotes);
      const gone = remotes.find((n) => !held.includes(n));
      if (gone) throw await unknownCluster(tx, current, gone);
    },
  };
}
