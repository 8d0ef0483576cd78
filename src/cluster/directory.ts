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

/** Reads cluster rows from cluster_metadata; the current cluster is fixed at boot. */
export function createClusterDirectory(db: Db, current: CurrentCluster): ClusterDirectory {
  return {
    current: () => current,
    async require(name) {
      if (name === current.clusterName) return current;
      const [row] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.clusterName, name));
      if (!row) throw notFound(`cluster ${shown(name)} is not known to cluster ${current.clusterName}`);
      return row;
    },
    list: () => db.select().from(clusterMetadata).orderBy(clusterMetadata.clusterName),
    async hold(tx, names) {
      const remotes = names.filter((n) => n !== current.clusterName);
      if (!remotes.length) return;
      const rows = await tx.select({ name: clusterMetadata.clusterName }).from(clusterMetadata).where(inArray(clusterMetadata.clusterName, remotes)).for("share");
      const gone = remotes.find((n) => !rows.some((r) => r.name === n));
      if (gone) throw notFound(`cluster ${shown(gone)} is not known to cluster ${current.clusterName}`);
    },
  };
}
