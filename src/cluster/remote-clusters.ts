import { and, count, eq, sql, type SQL } from "drizzle-orm";
import { alreadyExists, failedPrecondition, invalidArgument, unavailable } from "../errors";
import { transaction } from "../persistence/call-signal";
import type { Db, Tx } from "../persistence/database";
import { clusterMetadata, namespaces, replicationAckLevels } from "../persistence/schema";
import type { CurrentCluster } from "./bootstrap";
import { unknownCluster } from "./directory";
import { frontendAddressProblem, frontendUrl, lookedUpHost, notTernAnswer, peerFailureText, type RemoteClientPool } from "./remote-client";
import { shown, withoutPassword } from "../shown";
import { listsClusters } from "../namespace/lists-clusters";
import { heldListing } from "../../replication/namespace-held";

export type ClusterRow = typeof clusterMetadata.$inferSelect;

export interface RemoteClustersDeps {
  db: Db;
  current: CurrentCluster;
  clients: RemoteClientPool;
  /** Called after every change, so replication reacts at once (no refresh delay). */
  onChanged: () => Promise<void> | void;
  /** In the transaction that connects a remote not known before (its first upsert, or one after a remove). */
  onConnected?: (tx: Tx, remote: string) => Promise<void>;
  /** In the transaction that removes a remote. */
  onRemoved?: (tx: Tx, remote: string) => Promise<void>;
  describeTimeoutMs?: number;
}

/** Connecting and disconnecting remote clusters (the admin API behind `cluster upsert`). */
export function createRemoteClusters({ db, current, clients, onChanged, onConnected, onRemoved, describeTimeoutMs = 5000 }: RemoteClustersDeps) {
  /** Describes the remote, checks the connection rules, and stores what it answered; not once signal (the call's, persistence/call-signal.ts) fired. */
  async function upsert(frontendAddress: string, enableConnection = true, signal?: AbortSignal): Promise<ClusterRow> {
    if (!frontendAddress.trim()) throw invalidArgument("frontend address is required");
    const problem = frontendAddressProblem(frontendAddress);
    if (problem) throw invalidArgument(`frontend address ${shown(withoutPassword(frontendAddress), { quote: true })} ${problem}`);
    if (!enableConnection) {
      // Disabling a known remote needs no answer from it: it may be down, which is often why.
      const disabled = await disableKnown(frontendAddress);
      if (disabled) return disabled;
    }
    const remote = await describeRemote(frontendAddress).catch(async (e) => {
      if (enableConnection) throw e;
      throw unavailable(`${(e as Error).message}; ${await notKnownAt(frontendAddress)}`);
    });
    const values = {
      clusterName: remote.clusterName,
      clusterId: remote.clusterId,
      isCurrent: false,
      rpcAddress: frontendAddress.trim(),
      historyShardCount: remote.historyShardCount,
      failoverVersionIncrement: Number(remote.failoverVersionIncrement),
      initialFailoverVersion: Number(remote.initialFailoverVersion),
      isGlobalNamespaceEnabled: remote.isGlobalNamespaceEnabled,
      enableConnection,
      disabledAt: enableConnection ? null : new Date(),
      updatedAt: new Date(),
    };
    const row = await transaction(db, async (tx) => {
      // One upsert at a time (the current cluster's row is the lock): the rules compare the
      // remote with every cluster known, and another upsert may be adding one.
      await tx.select({ name: clusterMetadata.clusterName }).from(clusterMetadata).where(eq(clusterMetadata.isCurrent, true)).for("update");
      const known = await tx.select().from(clusterMetadata);
      const broken = connectionRule(current, remote, known);
      if (broken) throw failedPrecondition(`cannot connect cluster ${remote.clusterName} at ${shown(frontendAddress)}: ${broken}`);
      const [row] = await tx
        .insert(clusterMetadata)
        .values(values)
        .onConflictDoUpdate({ target: clusterMetadata.clusterName, set: { ...values, disabledAt: stillDisabledAt(values.disabledAt) }, where: eq(clusterMetadata.isCurrent, false) })
        .returning();
      if (row && !known.some((k) => k.clusterName === row.clusterName)) await onConnected?.(tx, row.clusterName);
      return row;
    }, signal);
    if (!row) throw alreadyExists(`cluster ${remote.clusterName} is this cluster`);
    await onChanged();
    return row;
  }

  /** Turns off the connection of the remote stored at address (as given, or the same URL); undefined if none is. */
  async function disableKnown(address: string): Promise<ClusterRow | undefined> {
    const url = frontendUrl(address);
    const known = (await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, false))).find((r) => frontendUrl(r.rpcAddress) === url);
    if (!known) return undefined;
    const [row] = await db
      .update(clusterMetadata)
      .set({ enableConnection: false, disabledAt: stillDisabledAt(new Date()), updatedAt: new Date() })
      .where(and(eq(clusterMetadata.clusterName, known.clusterName), eq(clusterMetadata.isCurrent, false)))
      .returning();
    if (!row) return undefined;
    await onChanged();
    return row;
  }

  /** For a disable that found no remote at address and no answer there: the addresses the remotes are known at. */
  async function notKnownAt(address: string): Promise<string> {
    const rows = await db.select().from(clusterMetadata).where(eq(clusterMetadata.isCurrent, false)).orderBy(clusterMetadata.clusterName);
    const known = rows.length ? rows.map((r) => `${r.clusterName} at ${r.rpcAddress}`).join(", ") : "none is connected";
    return `no remote cluster of ${current.clusterName} is known at ${shown(address.trim())}, and one that is down is disabled by the address it is known at (${known})`;
  }

  async function describeRemote(address: string) {
    const { operator, baseUrl } = clients.get(address);
    try {
      const res = await operator.describeCluster({}, { timeoutMs: describeTimeoutMs });
      if (!res.cluster) throw new Error("empty answer");
      return res.cluster;
    } catch (e) {
      // Reached, and answered by something else (a proxy's own 500 page): not "cannot reach".
      const answered = notTernAnswer(e);
      if (answered) throw unavailable(`${shown(baseUrl)} ${answered}`);
      // héllo:7233 is looked up as xn--hllo-bpa: an operator checking DNS for what failed needs that name.
      const asked = lookedUpHost(baseUrl);
      throw unavailable(`cannot reach a tern cluster at ${shown(baseUrl)}${asked ? ` (its host looked up as ${shown(asked)})` : ""}: ${peerFailureText(e)}`);
    }
  }

  /** Disconnects a remote; refused while a namespace lists both clusters; not once signal (the call's) fired. */
  async function remove(name: string, signal?: AbortSignal): Promise<void> {
    if (!name) throw invalidArgument("cluster name is required");
    if (name === current.clusterName) throw invalidArgument(`${shown(name)} is this cluster; it cannot be removed`);
    await transaction(db, async (tx) => {
      const [row] = await tx.select().from(clusterMetadata).where(eq(clusterMetadata.clusterName, name)).for("update");
      if (!row) throw await unknownCluster(tx, current, name);
      // A namespace held here behind a stale copy of its name lists it too: removed, its held changes stayed for good,
      // and applied once the copy went they made a namespace listing a removed cluster. The receiver's apply or
      // hold holds this row (holdKnown): one under way is waited for above, and seen here. Held read first, shared: a
      // retry applying held tasks (moving them into namespaces) under way is waited for, and one done is seen below.
      const held = (await heldListing(tx, name)).map(
        (h) => `${h.name} (id ${h.id}, its changes from ${h.from ? name : `${h.source}, listing ${name},`} held here behind a namespace ${h.name} with another id, ${h.localId})`,
      );
      const where = listsClusters(name, current.clusterName);
      const users = await tx
        .select({ name: namespaces.name, activeClusterName: namespaces.activeClusterName, clusters: namespaces.clusters })
        .from(namespaces)
        .where(where)
        .orderBy(namespaces.name)
        .limit(LISTED_SHOWN);
      if (users.length || held.length) {
        const listing = users.length < LISTED_SHOWN ? users.length : (await tx.select({ n: count() }).from(namespaces).where(where))[0]!.n;
        throw failedPrecondition(stillListedText(name, users, held, listing));
      }
      await tx.delete(replicationAckLevels).where(eq(replicationAckLevels.remoteCluster, name));
      await onRemoved?.(tx, name);
      await tx.delete(clusterMetadata).where(and(eq(clusterMetadata.clusterName, name), eq(clusterMetadata.isCurrent, false)));
    }, signal);
    await onChanged();
  }

  return { upsert, remove };
}

export type RemoteClusters = ReturnType<typeof createRemoteClusters>;

/** How many of the namespaces listing a cluster a refused remove names (and the command for each). */
const LISTED_SHOWN = 3;

/**
 * Why a remove is refused: the namespaces listing the cluster (LISTED_SHOWN of count, then "and N more"), held
 * changes listing it, and for each namespace shown the update to run on its active cluster, naming the clusters it keeps.
 */
function stillListedText(name: string, users: { name: string; activeClusterName: string; clusters: string[] }[], held: string[], count: number): string {
  const more = count > users.length ? ` and ${count - users.length} more` : "";
  const fixes = users.map((u) => {
    const keeps = u.clusters.filter((c) => c !== name).map((c) => ` --cluster ${c}`).join("");
    return `'tern operator namespace update -n ${u.name}${keeps}' on ${u.activeClusterName}`;
  });
  const how = fixes.length ? `, on each namespace's active cluster (${fixes.join("; ")}${more ? "; 'tern operator namespace list' shows the rest" : ""})` : "";
  return `cluster ${name} is still listed by namespace(s) ${[...users.map((u) => u.name), ...held].join(", ")}${more}; remove it from their clusters first${how}`;
}

/** The first connection rule the remote breaks (DESIGN.md section 1), or undefined. */
export function connectionRule(
  current: CurrentCluster,
  remote: {
    clusterName: string;
    clusterId: string;
    failoverVersionIncrement: bigint;
    initialFailoverVersion: bigint;
    historyShardCount: number;
    isGlobalNamespaceEnabled: boolean;
  },
  known: { clusterName: string; clusterId: string; initialFailoverVersion: number }[],
): string | undefined {
  if (remote.clusterName === current.clusterName) return `it has this cluster's name (${current.clusterName})`;
  if (!current.isGlobalNamespaceEnabled) return `global namespaces are disabled on ${current.clusterName} (enableGlobalNamespace)`;
  if (!remote.isGlobalNamespaceEnabled) return `global namespaces are disabled on ${remote.clusterName} (enableGlobalNamespace)`;
  const inc = Number(remote.failoverVersionIncrement);
  if (inc !== current.failoverVersionIncrement) {
    return `its failoverVersionIncrement (${inc}) differs from this cluster's (${current.failoverVersionIncrement})`;
  }
  const initial = Number(remote.initialFailoverVersion);
  const clash = known.find((k) => k.clusterName !== remote.clusterName && k.initialFailoverVersion === initial);
  if (clash) return `its initialFailoverVersion ${initial} is already used by cluster ${clash.clusterName}`;
  const a = remote.historyShardCount;
  const b = current.historyShardCount;
  if (a % b !== 0 && b % a !== 0) return `shard counts ${a} and ${b} are not multiples of each other`;
  const same = known.find((k) => k.clusterName === remote.clusterName);
  if (same && same.clusterId !== remote.clusterId) {
    return `cluster ${remote.clusterName} is known with id ${same.clusterId} but the remote has id ${remote.clusterId}; remove it first`;
  }
  return undefined;
}

/**
 * A remote's disabledAt as an update sets it: null once enabled; disabled, when it was first
 * disabled, not now (cleanup.ts counts the remote's grace from it: an upsert that kept it
 * disabled restarted the grace, and a remote disabled for good but upserted within it held the queue).
 */
function stillDisabledAt(now: Date | null): SQL | null {
  return now && sql`coalesce(${clusterMetadata.disabledAt}, ${now.toISOString()}::timestamptz)`;
}
