import { and, eq, sql } from "drizzle-orm";
import type { ClusterDirectory } from "../src/cluster/directory";
import { TernError, connectionLost, failedPrecondition, invalidArgument, loggableError, unavailable } from "../src/errors";
import { lockNamespaceForChange } from "../src/history/namespace-guard";
import type { EventNotifier } from "../src/history/notifier";
import { createLongPolls } from "../src/long-polls";
import { failoverTo, type NamespaceRecord, type NamespaceRegistry } from "../src/namespace/registry";
import type { Logger } from "../src/observability/log";
import { transaction } from "../src/persistence/call-signal";
import type { Db, HeldLock } from "../src/persistence/database";
import { namespaces } from "../src/persistence/schema";
import { listenForAckChange, outboundAcks } from "./ack-levels";
import type { FailoverMembersCheck, MembersApplied } from "./failover-members";
import type { TargetHolds, TargetMovedOn, TargetNamespace, TargetProblem } from "./failover-target";
import { appendNamespaceTask, namespaceQueueMax, readAck } from "./namespace-queue";
import { MAX_WAIT_MS } from "./namespace-sender";
import { sleep } from "../src/sleep";
import { lastTaskIds } from "./outbox";
import { shown } from "../src/shown";

export interface GracefulFailoverDeps {
  db: Db;
  namespaces: NamespaceRegistry;
  clusters: ClusterDirectory;
  /** Woken with ackKey(remote) when a remote's outbound ack moves. */
  notifier: EventNotifier;
  log: Logger;
  /** A namespace task committed (wakes the namespace sender). */
  onReplicated?: () => void;
  /** A failover could not leave HANDOVER: the abandoned-handover reset takes it over (handover-reset.ts). */
  onLeftInHandover?: () => void;
  now?: () => Date;
  /** Longest wait between two reads of the target's acks (an ack saved by another process wakes nobody here). */
  recheckMs?: number;
  /** This cluster's connection to a remote as `replication status` shows it ("connected", "error: ..."), for a timeout's answer. */
  connectionState?: (cluster: string) => string;
  /** Why a failover to target would leave a cluster without its writes, as the clusters say (createFailoverTargetCheck), or undefined. */
  targetProblem?: (target: string, members: string[], failoverTimeoutMs: number, ns: TargetNamespace) => Promise<TargetProblem | undefined>;
  /** The failover version target holds the namespace at, when above ns's (a failover made elsewhere reached it): asked just before the switch (createFailoverTargetRecheck). */
  targetMovedOn?: (target: string, ns: TargetNamespace, failoverTimeoutMs: number) => Promise<TargetMovedOn | undefined>;
  /** The namespace of id as target holds it, asked once it acked the switch: whether it took it (createTargetHolds). */
  targetHolds?: (target: string, id: string, waitMs: number) => Promise<TargetHolds>;
  /** What the target must have applied of the namespace's other members (createFailoverMembersCheck). */
  members?: FailoverMembersCheck;
  /** How long after the target's last poll of the namespace queue a failover to it is refused at once (default NAMESPACE_POLLS_LATE_MS). */
  namespacePollsLateMs?: number;
  /** Holds a lock other server processes on the database see (Database.withSessionLock) while fn runs. */
  withSessionLock?: <T>(key: string, fn: (lock: HeldLock) => Promise<T>, taken: () => Error) => Promise<T>;
}

/**
 * A target whose last poll of the namespace queue is older than this does not hear it (one that
 * does polls at least every MAX_WAIT_MS, its poll held open that long at most): a failover to it
 * is refused before HANDOVER, not held there for its timeout.
 */
export const NAMESPACE_POLLS_LATE_MS = MAX_WAIT_MS + 10_000;

/** How long a failed failover keeps trying to leave HANDOVER before it answers. */
const LEAVE_RETRY_MS = 10_000;
/** The least a graceful failover's answer waits for the target to confirm the switch (the target asked waits as long for it: operator-handler.ts). */
export const SWITCH_HEARD_WAIT_MS = 5_000;

/**
 * The lock a graceful failover holds while its namespace is in HANDOVER: the resets of abandoned
 * HANDOVERs (resetAbandonedHandovers, at start and periodically on PostgreSQL: handover-reset.ts) leave that one alone.
 */
const handoverOwnerKey = (namespaceId: string) => `tern-handover-owner:${namespaceId}`;

/** Where the target had to be before the switch: per local shard, and in the namespace queue. */
export interface HandoverPoint {
  /** Each shard's last task id, by shard id in ascending order. */
  shards: Map<number, number>;
  namespaceTaskId: number;
  /** What this cluster had applied of the other members' shards: the target must have it too. */
  members: MembersApplied;
}

/**
 * Graceful failover (DESIGN.md section 5): HANDOVER, record the handover point, wait
 * until the target acked it, then switch in one transaction. Whatever happens, the
 * namespace leaves HANDOVER before this returns.
 */
export function createGracefulFailover(deps: GracefulFailoverDeps) {
  const { db, log, now = () => new Date(), recheckMs = 200, namespacePollsLateMs = NAMESPACE_POLLS_LATE_MS, withSessionLock = (_key, fn) => fn({ lost: new AbortController().signal, check: async () => {} }) } = deps;
  const inHandover = (name: string) => failedPrecondition(`namespace ${name} changed or is already in a graceful failover; retry`);
  const current = deps.clusters.current();
  // A stopping server abandons the failovers still waiting, while its database is open to leave HANDOVER.
  const running = createLongPolls(() => unavailable(`cluster ${current.clusterName} is shutting down: no graceful failover starts here now; retry on a running server`));

  /**
   * HANDOVER, with the handover's mark in the namespace queue: the namespace as it stands (the
   * target skips it, having it already). The target acks past the mark only by polling this
   * queue after it was made and coming back for more, so the switch waits for proof that the
   * target hears this queue now: its history acked, a target whose namespace polls fail would
   * otherwise never hear the switch and both clusters refuse the namespace's writes.
   */
  async function enterHandover(ns: NamespaceRecord, call?: AbortSignal): Promise<void> {
    // The exclusive barrier lock waits for every write that read NORMAL to commit (namespace-guard.ts).
    const marked = await transaction(db, async (tx) => {
      await lockNamespaceForChange(tx, ns.id);
      const [row] = await tx
        .update(namespaces)
        .set({ replicationState: "HANDOVER", updatedAt: now() })
        .where(and(eq(namespaces.id, ns.id), eq(namespaces.replicationState, "NORMAL"), eq(namespaces.failoverVersion, ns.failoverVersion), eq(namespaces.activeClusterName, current.clusterName)))
        .returning();
      if (row) await appendNamespaceTask(tx, row, row.clusters);
      return row !== undefined;
    }, call);
    deps.namespaces.invalidate(ns);
    if (!marked) throw inHandover(ns.name);
    deps.onReplicated?.();
  }

  /**
   * Back to NORMAL, retried while the database is away: a failover that failed because it went
   * away would otherwise leave HANDOVER behind (every write waiting, then refused; every new
   * failover refused) until a restart. Gives up after LEAVE_RETRY_MS, not to keep its caller
   * waiting out a long outage (on PostgreSQL the periodic resetAbandonedHandovers then does it,
   * its lock being free), or once the server stops (its next start does).
   */
  async function leaveHandover(ns: NamespaceRecord, why: string, signal: AbortSignal): Promise<void> {
    const until = Date.now() + LEAVE_RETRY_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        await db.update(namespaces).set({ replicationState: "NORMAL", updatedAt: now() }).where(and(eq(namespaces.id, ns.id), eq(namespaces.replicationState, "HANDOVER")));
        break;
      } catch (e) {
        if (signal.aborted || Date.now() >= until) throw e;
        if (attempt === 0) log.error("cannot leave HANDOVER yet; retrying", { namespace: ns.name, error: loggableError(e) });
        await sleep(Math.min(100 * 2 ** attempt, 1_000), signal);
      }
    }
    deps.namespaces.invalidate(ns);
    log.warn("graceful failover abandoned; namespace back to NORMAL", { namespace: ns.name, reason: why });
  }

  async function handoverPoint(target: string, ns: NamespaceRecord): Promise<HandoverPoint> {
    const members = (await deps.members?.appliedHere(target, ns.clusters)) ?? new Map();
    return { shards: await lastTaskIds(db), namespaceTaskId: await namespaceQueueMax(db), members };
  }

  /** Why target is known not to hear this cluster's namespace queue (so neither the switch), before HANDOVER; or undefined. */
  async function namespacePollsProblem(target: string): Promise<string | undefined> {
    const ns = await readAck(db, { remote: target, direction: "outbound", queue: "namespace", shardId: 0 });
    if (!ns.updatedAt) return `cluster ${target} has never polled ${current.clusterName}'s namespace queue, so it would not hear the switch`;
    // The clock the sender stamps polls with (advanceAckLevel), not the injectable now.
    const lateMs = Date.now() - ns.updatedAt.getTime();
    if (lateMs <= namespacePollsLateMs) return undefined;
    return `cluster ${target} has not polled ${current.clusterName}'s namespace queue since ${ns.updatedAt.toISOString()} (${Math.round(lateMs / 1000)} s ago), so it would not hear the switch`;
  }

  /** A target not polling this cluster's namespace queue would not hear a forced failover made here either: made on target, it is taken. */
  function unpolled(target: string, why: string | undefined): TargetProblem | undefined {
    return why === undefined ? undefined : { why, instead: `fix that first, or fail over forced on ${target} itself (made on ${current.clusterName}, ${target} would not hear it either)` };
  }

  /** What the target still lacks, or undefined once it acked the whole handover point. */
  async function lag(target: string, point: HandoverPoint): Promise<string | undefined> {
    const acks = await outboundAcks(db, target);
    for (const [shardId, max] of point.shards) {
      const acked = Number(acks.get(shardId) ?? 0);
      if (acked < max) return `cluster ${target} acked history shard ${shardId} up to task ${acked} of ${max}`;
    }
    const ns = await readAck(db, { remote: target, direction: "outbound", queue: "namespace", shardId: 0 });
    if (ns.ackLevel < point.namespaceTaskId) {
      const since = ns.updatedAt ? `since ${ns.updatedAt.toISOString()}` : "ever";
      return `cluster ${target} has not polled ${current.clusterName}'s namespace queue ${since} (acked up to task ${ns.ackLevel} of ${point.namespaceTaskId}), so it would not hear the switch`;
    }
    return deps.members?.targetLacks(target, point.members);
  }

  /**
   * Reads what target still lacks (behind) again at each of its acks (and every recheckMs) until
   * it lacks nothing (undefined), signal fires or deadline passes: then what it lacked last.
   */
  async function untilAcked(target: string, deadline: number, signal: AbortSignal, behind: () => Promise<string | undefined>): Promise<string | undefined> {
    for (;;) {
      const changed = listenForAckChange(deps.notifier, target, Math.min(Math.max(deadline - Date.now(), 0), recheckMs), signal);
      try {
        const lacking = await behind();
        if (!lacking || signal.aborted || deadline - Date.now() <= 0) return lacking;
        await changed.woke;
      } finally {
        changed.cancel();
      }
    }
  }

  async function waitCaughtUp(ns: NamespaceRecord, target: string, point: HandoverPoint, timeoutMs: number, stopping: AbortSignal, lockLost: AbortSignal, call?: AbortSignal): Promise<void> {
    const signal = AbortSignal.any([stopping, lockLost, ...(call ? [call] : [])]);
    const behind = await untilAcked(target, Date.now() + timeoutMs, signal, () => lag(target, point));
    if (!behind) return;
    // The caller's deadline passed (or it left): it has its answer; the failover ends without a switch.
    call?.throwIfAborted();
    lockLost.throwIfAborted();
    if (signal.aborted) {
      throw unavailable(
        `cluster ${current.clusterName} is shutting down: graceful failover of namespace ${ns.name} to ${target} abandoned (${behind}); ` +
          `${ns.name} stays active in ${current.clusterName} (replication state NORMAL); retry on a running server`,
      );
    }
    // Why it lagged, when this cluster can tell: the target down, or refusing.
    const connection = deps.connectionState?.(target);
    const why = connection?.startsWith("error: ") ? ` (the connection to ${target}: ${connection.slice(7)})` : "";
    throw unavailable(
      `graceful failover of namespace ${ns.name} to ${target} timed out after ${timeoutMs}ms: ${behind}${why}; ` +
        `${ns.name} stays active in ${current.clusterName} (replication state NORMAL); retry once ${target} has caught up`,
    );
  }

  /**
   * Refuses the switch when target holds the namespace at a failover version above the one the
   * handover began from: a failover made elsewhere (forced, this cluster cut off from it) reached
   * target during the wait. The switch's version, the next above this cluster's, may top that one
   * (A at 1 to C: 3, over B's forced 2), and target would take it, its writes at the forced
   * version then losing their branch. Temporal's handover switches regardless (the higher version
   * wins); here the namespace stays where the forced failover put it, and HANDOVER ends (failover's catch).
   * A target that does not answer is refused too (fail closed): the switch would go out unchecked,
   * and the failover answer that it switched while the target, holding a later failover, refuses it
   * (namespace-applier.ts refusedSwitch). The namespace stays active here; the operator retries.
   */
  async function refuseIfTargetMovedOn(ns: NamespaceRecord, target: string, timeoutMs: number): Promise<void> {
    const there = await deps.targetMovedOn?.(target, { name: ns.name, id: ns.id, failoverVersion: ns.failoverVersion }, timeoutMs);
    if (!there) return;
    if ("unanswered" in there) {
      throw unavailable(
        `cluster ${target} did not answer for namespace ${ns.name} just before the switch of its graceful failover (${there.unanswered}), so whether a later failover reached it is unknown; ` +
          `nothing was switched: ${ns.name} stays active in ${current.clusterName} (replication state NORMAL); retry the failover`,
      );
    }
    throw failedPrecondition(
      `cluster ${target} heard of a later failover during the graceful failover of namespace ${ns.name}: it holds it at failover version ${there.failoverVersion} (active in ${there.active}), ` +
        `above ${ns.failoverVersion}, the version the handover began from; nothing was switched, and ${ns.name} leaves HANDOVER here: ` +
        `${current.clusterName} hears of that failover once connected to the cluster that made it`,
    );
  }

  /** The switch: active = target at the next failover version, NORMAL, with its namespace task, in one transaction. */
  async function switchActive(ns: NamespaceRecord, target: string, targetInitial: number, call?: AbortSignal): Promise<{ namespace: NamespaceRecord; taskId: number }> {
    const { saved, taskId } = await transaction(db, async (tx) => {
      const [row] = await tx.select().from(namespaces).where(eq(namespaces.id, ns.id)).for("update");
      if (!row || row.replicationState !== "HANDOVER" || row.failoverVersion !== ns.failoverVersion) {
        throw failedPrecondition(`namespace ${ns.name} changed during the graceful failover (now active in ${row?.activeClusterName} at version ${row?.failoverVersion}); nothing was switched`);
      }
      const change = failoverTo(row, target, targetInitial, current.failoverVersionIncrement, now(), "graceful");
      const [saved] = await tx
        .update(namespaces)
        .set({ ...change, replicationState: "NORMAL", configVersion: row.configVersion + 1, updatedAt: now() })
        .where(and(eq(namespaces.id, row.id), eq(namespaces.configVersion, row.configVersion)))
        .returning();
      return { saved: saved!, taskId: await appendNamespaceTask(tx, saved!, row.clusters) };
    }, call);
    deps.namespaces.invalidate(saved);
    deps.onReplicated?.();
    return { namespace: saved, taskId };
  }

  /**
   * Whether target took the switch: once it acked the switch's namespace task (it applied or
   * refused it: namespace-applier.ts refusedSwitch), what it holds. Before, the failover answered
   * ok at the ack, though the target refused a switch a failover made elsewhere had overtaken.
   * Undefined: it holds the switch. Refused (or overtaken there): FAILED_PRECONDITION. Not known
   * by the deadline (no ack, no answer): why, for the answer to say (the switch stands here).
   */
  async function confirmSwitch(switched: NamespaceRecord, target: string, taskId: number, deadline: number, stopping: AbortSignal, call?: AbortSignal): Promise<string | undefined> {
    const signal = call ? AbortSignal.any([stopping, call]) : stopping;
    const behind = await untilAcked(target, deadline, signal, async () => {
      const { ackLevel } = await readAck(db, { remote: target, direction: "outbound", queue: "namespace", shardId: 0 });
      return ackLevel < taskId ? `${target} has acked namespace task ${ackLevel} of ${taskId} (the switch)` : undefined;
    });
    if (behind) return behind;
    const there = await deps.targetHolds?.(target, switched.id, Math.min(Math.max(deadline - Date.now(), 1_000), SWITCH_HEARD_WAIT_MS));
    if (!there) return undefined;
    if (there === "not found" || "unanswered" in there || there.failoverVersion === undefined) {
      return `${target} acked the switch but did not say what it holds (${there === "not found" ? "not found there" : "unanswered" in there ? there.unanswered : "no version"})`;
    }
    const v = BigInt(switched.failoverVersion);
    if (there.failoverVersion === v && there.active === target) return undefined;
    throw switchNotTaken(switched.name, current.clusterName, target, v, { failoverVersion: there.failoverVersion, active: there.active });
  }

  /**
   * Fails namespace over to target gracefully; must run on the namespace's active cluster.
   * stopping: the server's stop; call: the caller's signal (persistence/call-signal.ts), once
   * fired no HANDOVER is entered nor switch made, and the wait for the target ends. Leaving
   * HANDOVER does not heed the call: it must happen whatever the caller does.
   */
  async function failover(name: string, target: string, timeoutMs: number, stopping: AbortSignal, call?: AbortSignal, targetWaits = false): Promise<{ namespace: NamespaceRecord; handover: HandoverPoint; unconfirmed?: string }> {
    if (!target) throw invalidArgument("target cluster is required");
    const ns = await deps.namespaces.describe({ name });
    if (!ns.isGlobal) throw failedPrecondition(`namespace ${name} is local: only global namespaces fail over`);
    if (!ns.clusters.includes(target)) throw invalidArgument(`cluster ${shown(target)} is not one of namespace ${name}'s clusters (${ns.clusters.join(", ")})`);
    if (ns.activeClusterName === target) throw failedPrecondition(`namespace ${name} is already active in cluster ${target}`);
    if (ns.activeClusterName !== current.clusterName) throw failedPrecondition(`namespace ${name} is active in cluster ${ns.activeClusterName}`);
    const targetInfo = await deps.clusters.require(target);
    // A disabled connection pauses replication both ways: the target could never catch up.
    if (targetInfo.enableConnection === false) {
      throw failedPrecondition(`replication with cluster ${target} is disabled on ${current.clusterName} (enable_connection is false), so it cannot catch up: enable the connection first, or fail over forced`);
    }
    // What the clusters say first: a target that does not know this one has never polled it either.
    const problem = (await deps.targetProblem?.(target, ns.clusters, timeoutMs, { name, id: ns.id, failoverVersion: ns.failoverVersion })) ?? unpolled(target, await namespacePollsProblem(target));
    if (problem) throw failedPrecondition(`${problem.why}; ${problem.instead}; ${name} stays active in ${current.clusterName}`);
    // The switch's confirmation waits within the failover's timeout, SWITCH_HEARD_WAIT_MS at least.
    const confirmBy = Date.now() + timeoutMs;
    return withSessionLock(handoverOwnerKey(ns.id), async (lock) => {
      const lockLost = lock.lost;
      await enterHandover(ns, call);
      let switched: NamespaceRecord | undefined;
      try {
        const point = await handoverPoint(target, ns);
        log.info("graceful failover: handover point recorded", { namespace: name, target, shards: Object.fromEntries(point.shards), namespaceTaskId: point.namespaceTaskId });
        await waitCaughtUp(ns, target, point, timeoutMs, stopping, lockLost, call);
        // Without its lock, a server of the cluster may put the namespace back to NORMAL at any
        // time: asked of the lock's session, not only from its close having come.
        await lock.check();
        await refuseIfTargetMovedOn(ns, target, timeoutMs);
        const { namespace, taskId } = await switchActive(ns, target, targetInfo.initialFailoverVersion, call);
        switched = namespace;
        log.info("graceful failover done", { namespace: name, target, failoverVersion: switched.failoverVersion });
        // Switched: past a database error the failover is done, unconfirmed. The target that asked
        // (forwarded here) waits for its own view itself.
        const switchedAt = Date.now();
        const deadline = Math.max(confirmBy, switchedAt + SWITCH_HEARD_WAIT_MS);
        const unconfirmed = targetWaits ? undefined : await confirmSwitch(switched, target, taskId, deadline, stopping, call).catch((e) => {
          if (e instanceof TernError) throw e;
          return `cannot tell whether ${target} took it (${loggableError(e)})`;
        });
        if (unconfirmed) log.warn("graceful failover: the target has not confirmed the switch", { namespace: name, target, unconfirmed });
        else if (!targetWaits) log.info("graceful failover: the target took the switch", { namespace: name, target, confirmMs: Date.now() - switchedAt });
        return { namespace: switched, handover: point, unconfirmed };
      } catch (e) {
        if (switched) throw e;
        const left = await leaveHandover(ns, "timed out or failed", stopping).then(() => true, (e) => {
          deps.onLeftInHandover?.();
          log.error("cannot leave HANDOVER; it is reset once the database is back (PostgreSQL) or at the next start", { namespace: name, error: loggableError(e) });
          return false;
        });
        // A restart of PostgreSQL: the lock's session ended (whence "changed during the graceful
        // failover" once a server of the cluster reset the HANDOVER), or a statement's connection.
        if (lockLost.aborted || connectionLost(e)) throw await databaseLost(ns, target, left, lockLost.aborted ? lockLost.reason : e);
        throw e;
      }
    }, () => inHandover(name));
  }

  /** The answer of a failover whose database connection was lost: what became of the namespace, as the database says it now. */
  async function databaseLost(ns: NamespaceRecord, target: string, left: boolean, e: unknown): Promise<Error> {
    const [row] = await db.select().from(namespaces).where(eq(namespaces.id, ns.id)).catch(() => []);
    const back = `a server of cluster ${current.clusterName} puts a HANDOVER left behind back to NORMAL within about 2 s of the database's return`;
    const state = !row
      ? `what became of ${ns.name} cannot be read yet (namespace describe shows it): ${back}; then retry the failover`
      : row.activeClusterName !== current.clusterName
        ? `${ns.name} is active in ${row.activeClusterName} at version ${row.failoverVersion} now`
        : row.replicationState === "HANDOVER" || !left
          ? `nothing was switched: ${ns.name} stays active in ${current.clusterName}, still in HANDOVER: ${back}; then retry the failover`
          : `nothing was switched: ${ns.name} stays active in ${current.clusterName} (replication state NORMAL); retry the failover`;
    return unavailable(`the database connection was lost during the graceful failover of namespace ${ns.name} to ${target} (${loggableError(e)}); ${state}`);
  }

  return {
    /** call: the caller's signal (see failover). */
    /** targetWaits: the target asked (the call forwarded from it), and waits to hear of the switch itself. */
    run: (name: string, target: string, timeoutMs: number, call?: AbortSignal, targetWaits?: boolean) =>
      running.run(undefined, (stopping) => failover(name, target, timeoutMs, stopping, call, targetWaits)),
    /** Abandons the failovers waiting for their target (each leaves HANDOVER and answers UNAVAILABLE) and refuses new ones. */
    stop: () => running.end(),
  };
}

export type GracefulFailover = ReturnType<typeof createGracefulFailover>;

/**
 * The answer to a graceful switch (version v, made on issuer) that its target holds otherwise
 * (there): refused there (below v: a failover made elsewhere reached it first) or overtaken (above
 * v). The same whoever asked: the issuer (confirmSwitch) or the target, forwarded (operator-handler.ts).
 */
export function switchNotTaken(name: string, issuer: string, target: string, v: bigint, there: { failoverVersion: bigint; active?: string }): TernError {
  const what = there.failoverVersion < v ? `${target} refused the switch because a failover made elsewhere reached it first` : `a later failover overtook the switch at ${target}`;
  return failedPrecondition(
    `graceful failover of namespace ${name} to ${target}: the switch (version ${v}) was made on ${issuer}, but ${what}; ` +
      `${name} is active in ${there.active} at version ${there.failoverVersion} now (${issuer} takes that from ${target} once it hears it)`,
  );
}

/**
 * At startup: a HANDOVER whose failover's lock nobody holds was left by a crashed failover; put
 * it back to NORMAL. One whose lock is held belongs to a failover another server process on the
 * same database runs now: reset, it would let writes through during that handover, and the
 * failover then end with "changed during the graceful failover".
 */
export async function resetAbandonedHandovers(db: Db, log: Logger): Promise<string[]> {
  const rows = await db
    .update(namespaces)
    .set({ replicationState: "NORMAL", updatedAt: new Date() })
    // CASE: the lock is tried on HANDOVER rows only, never once per namespace (each would stay
    // in PostgreSQL's shared lock table until commit).
    .where(and(eq(namespaces.replicationState, "HANDOVER"), sql`case when ${namespaces.replicationState} = 'HANDOVER' then pg_try_advisory_xact_lock(hashtextextended(${handoverOwnerKey("")} || ${namespaces.id}, 0)) else false end`))
    .returning({ name: namespaces.name });
  for (const r of rows) log.warn("namespace was left in HANDOVER by an interrupted graceful failover; reset to NORMAL", { namespace: r.name });
  return rows.map((r) => r.name);
}
