import { eq } from "drizzle-orm";
import { notFound } from "../errors";
import type { Db } from "../persistence/database";
import { clusterMetadata } from "../persistence/schema";
import type { CurrentCluster } from "./bootstrap";

/** Known clusters: this one plus, later, connected remotes. */
export interface ClusterDirectory {
  current(): CurrentCluster;
  /** A known cluster by name; NOT_FOUND naming it otherwise. */
  require(name: string): Promise<{ clusterName: string; initialFailoverVersion: number; enableConnection?: boolean }>;
  list(): Promise<(typeof clusterMetadata.$inferSelect)[]>;
}

/** Reads cluster rows from cluster_metadata; the current cluster is fixed at boot. */
export function createClusterDirectory(db: Db, current: CurrentCluster): ClusterDirectory {
  return {
    current: () => current,
    async require(name) {
      if (name === current.clusterName) return current;
      const [row] = await db.select().from(clusterMetadata).where(eq(clusterMetadata.clusterName, name));
      if (!row) throw notFound(`cluster ${name} is not known to cluster ${current.clusterName}`);
      return row;
    },
    list: () => db.select().from(clusterMetadata).orderBy(clusterMetadata.clusterName),
  };
}
