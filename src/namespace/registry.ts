import { and, asc, eq, gt, sql } from "drizzle-orm";
import { ulid } from "ulid";
import { stopBackfillsOfNonMembers } from "../../replication/backfill-jobs";
import { heldBehindText } from "../../replication/namespace-held";
import { appendNamespaceTask } from "../../replication/namespace-queue";
import { nextFailoverVersion } from "../cluster/metadata";
import { lockNamespaceBarrier } from "../history/namespace-guard";
import type { ClusterDirectory } from "../cluster/directory";
import { alreadyExists, failedPrecondition, invalidArgument, notFound, pgErrorOf } from "../errors";
import { transaction } from "../persistence/call-signal";
import type { Db, Tx } from "../persistence/database";
import { namespaces, type FailoverHistoryEntry } from "../persistence/schema";
import { decodeToken, encodeToken, NAME_TOKEN } from "../persistence/page-token";
import { checkDataCount, checkDataEntries, checkDescription, checkNamespaceName, checkOwnerEmail, checkRetentionSeconds } from "./validate";
import { shown } from "../shown";

export type NamespaceRecord = typeof namespaces.$inferSelect;

export const DEFAULT_RETENTION_SECONDS = 72 * 3600;
const FAILOVER_HISTORY_LIMIT = 10;
/** Most names the not-found cache holds. */
const MAX_MISSING = 10_000;
/** The one answer for a namespace that is not there, whether read or remembered missing. */
const namespaceNotFound = (what: string) => notFound(`namespace ${shown(what)} not found`);

export interface RegisterInput {
  name: string;
  description?: string;
  ownerEmail?: string;
  retentionSeconds?: number;
  data?: Record<string, string>;
  isGlobal?: boolean;
  clusters?: string[];
  activeClusterName?: string;
  /** The call's signal (persistence/call-signal.ts): once it fired, the change does not commit. */
  signal?: AbortSignal;
}

export interface UpdateInput {
  name: string;
  description?: string;
  ownerEmail?: string;
  retentionSeconds?: number;
  data?: Record<string, string>;
  clusters?: string[];
  activeClusterName?: string;
  /** Makes a local namespace global, active here (a no-op on a global one). */
  promote?: boolean;
  /** The call's signal (persistence/call-signal.ts): once it fired, the change does not commit. */
  signal?: AbortSignal;
}

/** What an update did: the namespace as saved, and whether it failed it over (a new active cluster: a forced failover). */
export interface UpdatedNamespace {
  namespace: NamespaceRecord;
  failedOver: boolean;
}

/** Namespace verbs plus a lookup cache that every write here invalidates. */
export interface NamespaceRegistry {
  register(input: RegisterInput): Promise<NamespaceRecord>;
  describe(ref: { name?: string; id?: string }): Promise<NamespaceRecord>;
  list(pageSize: number, token: Uint8Array): Promise<{ items: NamespaceRecord[]; nextPageToken: Uint8Array }>;
  update(input: UpdateInput): Promise<UpdatedNamespace>;
  /** signal: the call's (persistence/call-signal.ts). */
  deprecate(name: string, signal?: AbortSignal): Promise<NamespaceRecord>;
  /** Cached lookup by name; NOT_FOUND when absent (a name found missing stays so for missTtlMs, unless registered or invalidated here). */
  getByName(name: string): Promise<NamespaceRecord>;
  getById(id: string): Promise<NamespaceRecord>;
  /** Drops cached entries (after deletes or changes made elsewhere). */
  invalidate(record?: NamespaceRecord): void;
  /** Whether name is a namespace this registry has read or learnt (no read), or readNames found: not one a client made up. */
  known(name: string): boolean;
  /**
   * Reads every namespace's name for known(), at most once per missTtlMs (callers meanwhile share
   * the read, or get none): what tells a namespace's first call after a start from made-up names.
   */
  readNames(): Promise<void>;
}

export interface NamespaceRegistryDeps {
  db: Db;
  clusters: ClusterDirectory;
  /** How long a cached entry may serve reads of changes made by other processes. */
  cacheTtlMs?: number;
  /** How long a name found missing is answered NOT_FOUND without a read (at most cacheTtlMs). */
  missTtlMs?: number;
  now?: () => Date;
  /** A namespace replication task committed: wakes the namespace sender's long polls. */
  onReplicated?: () => void;
  /** A change made this cluster active for ns (the timer queue fires what became due). */
  onActivated?: (ns: NamespaceRecord) => void;
  /** An update saved ns (an activation too). */
  onChanged?: (ns: NamespaceRecord) => void;
  /** A record read or saved here is in HANDOVER (the abandoned-handover reset runs soon: handover-reset.ts). */
  onHandoverSeen?: (ns: NamespaceRecord) => void;
}

/** Creates the namespace registry over the namespaces table. */
export function createNamespaceRegistry(deps: NamespaceRegistryDeps): NamespaceRegistry {
  const { db, clusters, cacheTtlMs = 2000, now = () => new Date() } = deps;
  const missTtlMs = Math.min(deps.missTtlMs ?? 1000, cacheTtlMs);
  const byName = new Map<string, { record: NamespaceRecord; at: number }>();
  const byId = new Map<string, { record: NamespaceRecord; at: number }>();
  /*
   * Names looked up by getByName and not found, with when: a client that keeps asking for a
   * namespace that does not exist (a typo in its configuration) is answered from here, not with
   * a read per request, as Temporal's registry does with its not-found cache.
   */
  const missing = new Map<string, number>();
  /** Moves with every record learnt or dropped: a read that began before one does not record its miss. */
  let learnt = 0;
  /** Every namespace's name as readNames last found them (names only: a refused call's second look). */
  let names = new Set<string>();
  let namesReadAt = Number.NEGATIVE_INFINITY;
  let namesReading: Promise<void> | undefined;
  const remember = (r: NamespaceRecord) => {
    if (r.replicationState === "HANDOVER") deps.onHandoverSeen?.(r);
    const entry = { record: r, at: Date.now() };
    byName.set(r.name, entry);
    byId.set(r.id, entry);
    missing.delete(r.name);
    learnt++;
    return r;
  };
  const forget = (r?: NamespaceRecord) => {
    learnt++;
    if (!r) return byName.clear(), byId.clear(), missing.clear(), names.clear();
    names.delete(r.name);
    byName.delete(r.name);
    byId.delete(r.id);
    missing.delete(r.name);
  };
  const missed = (name: string, readFrom: number) => {
    if (readFrom !== learnt) return;
    missing.delete(name);
    missing.set(name, Date.now());
    // Random names must not grow it without bound: the oldest go first.
    if (missing.size > MAX_MISSING) missing.delete(missing.keys().next().value!);
  };
  const knownMissing = (name: string) => Date.now() - (missing.get(name) ?? -Infinity) < missTtlMs;
  const fresh = (e?: { record: NamespaceRecord; at: number }) => (e && Date.now() - e.at < cacheTtlMs ? e.record : undefined);

  async function load(where: ReturnType<typeof eq>, what: string, onMissing?: () => void): Promise<NamespaceRecord> {
    const [row] = await db.select().from(namespaces).where(where);
    if (!row) {
      onMissing?.();
      throw namespaceNotFound(what);
    }
    return remember(row);
  }

  async function register(input: RegisterInput): Promise<NamespaceRecord> {
    checkNamespaceName(input.name);
    checkOwnerEmail(input.ownerEmail ?? "");
    checkDescription(input.description ?? "");
    checkDataEntries(Object.entries(input.data ?? {}));
    checkDataCount(Object.keys(input.data ?? {}).length);
    const retentionSeconds = input.retentionSeconds ?? DEFAULT_RETENTION_SECONDS;
    checkRetentionSeconds(retentionSeconds);
    const current = clusters.current();
    let active = current.clusterName;
    let members = [current.clusterName];
    let failoverVersion = 0;
    if (input.isGlobal) {
      if (!current.isGlobalNamespaceEnabled) {
        throw failedPrecondition("global namespaces are disabled on this cluster (clusterMetadata.enableGlobalNamespace is false)");
      }
      if (current.masterClusterName !== current.clusterName) {
        throw failedPrecondition(
          `global namespaces are registered on the master cluster ${current.masterClusterName}, not on ${current.clusterName}`,
        );
      }
      active = input.activeClusterName || current.clusterName;
      members = dedupe(input.clusters?.length ? input.clusters : [active]);
      if (!members.includes(active)) throw invalidArgument(`active cluster ${shown(active)} must be one of the namespace's clusters`);
      const activeInfo = await clusters.require(active);
      for (const c of members) await clusters.require(c);
      failoverVersion = nextFailoverVersion(activeInfo.initialFailoverVersion, 0, current.failoverVersionIncrement);
    } else if (input.clusters?.length || input.activeClusterName) {
      const extra = input.clusters?.find((c) => c !== current.clusterName);
      if (extra || (input.activeClusterName && input.activeClusterName !== current.clusterName)) {
        throw invalidArgument("a local namespace lives only in the current cluster; register it global (is_global_namespace; tern: --global) to list other clusters");
      }
    }
    return insert(input.signal, {
      id: ulid(),
      name: input.name,
      state: "REGISTERED",
      description: input.description ?? "",
      ownerEmail: input.ownerEmail ?? "",
      data: input.data ?? {},
      retentionSeconds,
      isGlobal: !!input.isGlobal,
      activeClusterName: active,
      clusters: members,
      configVersion: 0,
      failoverVersion,
    });
  }

  /** Inserts a new namespace; a global one leaves its replication task in the same transaction. */
  async function insert(signal: AbortSignal | undefined, values: typeof namespaces.$inferInsert): Promise<NamespaceRecord> {
    try {
      const row = await transaction(db, async (tx) => {
        // A remove of a listed cluster, racing, waits and then refuses, or this finds it gone.
        if (values.isGlobal) await clusters.hold(tx, values.clusters!);
        const [row] = await tx.insert(namespaces).values(values).returning();
        if (row!.isGlobal) await appendNamespaceTask(tx, row!, []);
        return row!;
      }, signal);
      if (row.isGlobal) deps.onReplicated?.();
      return remember(row);
    } catch (e) {
      if (pgErrorOf(e).code === "23505") throw alreadyExists(`namespace ${values.name} already exists`);
      throw e;
    }
  }

  async function update(input: UpdateInput): Promise<UpdatedNamespace> {
    checkNamespaceName(input.name);
    if (input.ownerEmail !== undefined) checkOwnerEmail(input.ownerEmail);
    if (input.retentionSeconds !== undefined) checkRetentionSeconds(input.retentionSeconds);
    if (input.description !== undefined) checkDescription(input.description);
    // An empty value removes its key: a key too long to set may still be dropped.
    checkDataEntries(Object.entries(input.data ?? {}).filter(([, v]) => v !== ""));
    const known = await knownClusters(input);
    const updated = await transaction(db, async (tx) => {
      const [row] = await tx.select().from(namespaces).where(eq(namespaces.name, input.name)).for("update");
      if (!row) throw namespaceNotFound(input.name);
      const forcedFailover = !!input.activeClusterName && input.activeClusterName !== row.activeClusterName;
      if (!forcedFailover) requireConfigWriter(row, "update", input.activeClusterName);
      const behind = forcedFailover && row.isGlobal ? await heldBehindText(tx, row) : undefined;
      if (behind) throw failedPrecondition(`no forced failover: ${behind}`);
      const promoted = input.promote && !row.isGlobal ? promotion() : undefined;
      const base = promoted ? { ...row, ...promoted } : row;
      const changes = applyUpdate(base, input, known);
      const next = promoted ? { ...promoted, ...changes } : changes;
      if (!next) return { saved: row, changed: false, activated: false, failedOver: false };
      if (next.clusters) await clusters.hold(tx, next.clusters);
      // Ordered against writes and conflict resolution, which read the namespace under the barrier.
      if (row.isGlobal || promoted) await lockNamespaceBarrier(tx, row.id);
      const [saved] = await tx
        .update(namespaces)
        .set({ ...next, configVersion: row.configVersion + 1, updatedAt: now() })
        .where(and(eq(namespaces.id, row.id), eq(namespaces.configVersion, row.configVersion)))
        .returning();
      if (!saved) throw failedPrecondition(`namespace ${input.name} changed concurrently; retry`);
      if (saved.isGlobal) await appendNamespaceTask(tx, saved, row.clusters);
      if (next.clusters) await stopBackfillsOfNonMembers(tx, saved, now());
      return {
        saved,
        changed: true,
        activated: saved.activeClusterName !== row.activeClusterName && saved.activeClusterName === clusters.current().clusterName,
        // applyUpdate names an active cluster only as it fails over to it (a promotion's is the current one).
        failedOver: changes?.activeClusterName !== undefined,
      };
    }, input.signal);
    forget(updated.saved);
    remember(updated.saved);
    if (updated.saved.isGlobal) deps.onReplicated?.();
    if (updated.changed) deps.onChanged?.(updated.saved);
    if (updated.activated) deps.onActivated?.(updated.saved);
    return { namespace: updated.saved, failedOver: updated.failedOver };
  }

  /**
   * The columns that make a local namespace global (DESIGN.md section 2): active here,
   * listed in this cluster only, failover version next(current, 0). Its existing events
   * keep version 0; new writes get replication tasks from now on.
   */
  function promotion(): Partial<NamespaceRecord> {
    const current = clusters.current();
    if (!current.isGlobalNamespaceEnabled) {
      throw failedPrecondition("global namespaces are disabled on this cluster (clusterMetadata.enableGlobalNamespace is false)");
    }
    return {
      isGlobal: true,
      activeClusterName: current.clusterName,
      clusters: [current.clusterName],
      failoverVersion: nextFailoverVersion(current.initialFailoverVersion, 0, current.failoverVersionIncrement),
    };
  }

  /** Initial failover versions of the clusters an update names, read before its transaction (PGlite has one connection). */
  async function knownClusters(input: UpdateInput): Promise<Map<string, number>> {
    const names = dedupe([...(input.clusters ?? []), input.activeClusterName ?? ""]);
    const infos = await Promise.all(names.map((n) => clusters.require(n)));
    return new Map(infos.map((c) => [c.clusterName, c.initialFailoverVersion]));
  }

  /** The changed columns, or undefined when the update changes nothing. */
  function applyUpdate(row: NamespaceRecord, input: UpdateInput, known: Map<string, number>): Partial<NamespaceRecord> | undefined {
    const next: Partial<NamespaceRecord> = {};
    if (input.description !== undefined && input.description !== row.description) next.description = input.description;
    if (input.ownerEmail !== undefined && input.ownerEmail !== row.ownerEmail) next.ownerEmail = input.ownerEmail;
    if (input.retentionSeconds !== undefined && input.retentionSeconds !== row.retentionSeconds) {
      next.retentionSeconds = input.retentionSeconds;
    }
    if (input.data && Object.keys(input.data).length) {
      const data = { ...row.data };
      for (const [k, v] of Object.entries(input.data)) v === "" ? delete data[k] : (data[k] = v);
      checkDataCount(Object.keys(data).length, Object.keys(row.data).length);
      next.data = data;
    }
    const wantsClusters = !!input.clusters?.length;
    const wantsActive = !!input.activeClusterName && input.activeClusterName !== row.activeClusterName;
    if ((wantsClusters || input.activeClusterName) && !row.isGlobal) {
      throw invalidArgument(`namespace ${row.name} is local: clusters and active cluster apply to global namespaces only`);
    }
    const members = wantsClusters ? dedupe(input.clusters!) : row.clusters;
    if (wantsClusters) {
      if (!sameSet(members, row.clusters)) next.clusters = members;
    }
    const active = input.activeClusterName || row.activeClusterName;
    if (!members.includes(active)) throw invalidArgument(`active cluster ${shown(active)} must be one of the namespace's clusters`);
    if (wantsActive) {
      if (row.replicationState === "HANDOVER") throw failedPrecondition(`namespace ${row.name} is in a graceful failover (HANDOVER)`);
      // A cluster joining backfills from the active cluster: made active as it joined, it held none of the runs and brought none.
      if (!row.clusters.includes(active)) {
        throw failedPrecondition(
          `cluster ${active} is not one of namespace ${row.name}'s clusters yet (${row.clusters.join(", ")}): made active as it joins, it would hold none of its runs, ` +
            `and bring none (a joining cluster backfills from the active one); add it first, wait for its backfill to be DONE (backfill-status there), then fail over`,
        );
      }
      Object.assign(next, failoverTo(row, active, known.get(active)!, clusters.current().failoverVersionIncrement, now(), "forced"));
    }
    return Object.keys(next).length ? next : undefined;
  }

  /**
   * A global namespace's config has one writer, its active cluster; a forced failover (a new
   * active cluster) is the one change taken elsewhere. Another cluster's change would never
   * leave it (it is not listed) or race the active cluster's at the same config version, and
   * each cluster would keep its own.
   */
  function requireConfigWriter(row: NamespaceRecord, what: string, askedActive?: string): void {
    const here = clusters.current().clusterName;
    if (row.isGlobal && row.activeClusterName !== here) {
      // A forced failover to the cluster active already: not a failover, and not to be taken here.
      if (askedActive === row.activeClusterName) {
        throw failedPrecondition(`namespace ${row.name} is already active in cluster ${row.activeClusterName}: a forced failover needs another of its clusters (${row.clusters.join(", ")}); other changes are made on ${row.activeClusterName}`);
      }
      throw failedPrecondition(`namespace ${row.name} is global and active in cluster ${row.activeClusterName}: ${what} it there (on ${here} only a forced failover, a new active cluster, is taken)`);
    }
  }

  async function setState(name: string, state: string, what: string, signal?: AbortSignal): Promise<NamespaceRecord> {
    checkNamespaceName(name);
    const row = await transaction(db, async (tx) => {
      const [found] = await tx.select().from(namespaces).where(eq(namespaces.name, name)).for("update");
      if (!found) throw namespaceNotFound(name);
      requireConfigWriter(found, what);
      // Locked above: the update finds the row.
      const [row] = (await tx
        .update(namespaces)
        .set({ state, configVersion: sql`${namespaces.configVersion} + 1`, updatedAt: now() })
        .where(eq(namespaces.id, found.id))
        .returning()) as [NamespaceRecord];
      if (row.isGlobal) await appendNamespaceTask(tx, row, row.clusters);
      return row;
    }, signal);
    forget(row);
    if (row.isGlobal) deps.onReplicated?.();
    return remember(row);
  }

  return {
    register,
    update,
    deprecate: (name, signal) => setState(name, "DEPRECATED", "deprecate", signal),
    async describe({ name, id }) {
      if (name) {
        checkNamespaceName(name);
        return load(eq(namespaces.name, name), name);
      }
      if (id) return load(eq(namespaces.id, id), `with id ${id}`);
      throw invalidArgument("namespace name or id is required");
    },
    async list(pageSize, token) {
      const size = clampPage(pageSize);
      const after = token.length ? decodeToken(token, NAME_TOKEN).name : undefined;
      const rows = await db
        .select()
        .from(namespaces)
        .where(after !== undefined ? gt(namespaces.name, after) : undefined)
        .orderBy(asc(namespaces.name))
        .limit(size + 1);
      const items = rows.slice(0, size);
      const more = rows.length > size;
      return { items, nextPageToken: more ? encodeToken({ name: items.at(-1)!.name }) : new Uint8Array() };
    },
    async getByName(name) {
      const cached = fresh(byName.get(name));
      if (cached) return cached;
      checkNamespaceName(name);
      if (knownMissing(name)) throw namespaceNotFound(name);
      const readFrom = learnt;
      return load(eq(namespaces.name, name), name, () => missed(name, readFrom));
    },
    async getById(id) {
      return fresh(byId.get(id)) ?? load(eq(namespaces.id, id), `with id ${id}`);
    },
    invalidate: forget,
    known: (name) => byName.has(name) || names.has(name),
    readNames() {
      if (namesReading || Date.now() - namesReadAt < missTtlMs) return namesReading ?? Promise.resolve();
      namesReadAt = Date.now();
      const readFrom = learnt;
      namesReading = db
        .select({ name: namespaces.name })
        .from(namespaces)
        .then((rows) => {
          // A record dropped meanwhile (a delete here) may be among them: the next read has it right.
          if (readFrom === learnt) names = new Set(rows.map((r) => r.name));
        })
        .finally(() => (namesReading = undefined));
      return namesReading;
    },
  };
}

/** The columns a failover of row to target sets: next failover version and a bounded failover history, which says how it was made. */
export function failoverTo(row: NamespaceRecord, target: string, targetInitial: number, increment: number, time: Date, how: "forced" | "graceful") {
  const failoverVersion = nextFailoverVersion(targetInitial, row.failoverVersion, increment);
  // A graceful switch names the version it was made from: members that moved past it refuse it (namespace-applier.ts).
  const entry: FailoverHistoryEntry = { time: time.toISOString(), version: failoverVersion, from: row.activeClusterName, to: target, forced: how === "forced", ...(how === "graceful" ? { fromVersion: row.failoverVersion } : {}) };
  return {
    activeClusterName: target,
    failoverVersion,
    failoverHistory: [entry, ...row.failoverHistory].slice(0, FAILOVER_HISTORY_LIMIT),
  };
}

/** Page sizes: default 100, at most 1000. */
export function clampPage(size: number): number {
  if (!size || size <= 0) return 100;
  return Math.min(size, 1000);
}

const dedupe = (xs: string[]) => [...new Set(xs.filter(Boolean))];
const sameSet = (a: string[], b: string[]) => a.length === b.length && a.every((x) => b.includes(x));

export type { Tx };
