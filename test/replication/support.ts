import { expect } from "bun:test";
import type { HistoryApplier, IncomingTask } from "../../replication/applier";
import { asc, eq } from "drizzle-orm";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { lastTaskIds as shardLastTaskIds } from "../../replication/outbox";
import { executions, historyEvents, namespaces } from "../../src/persistence/schema";
import type { TestCluster } from "../support/server";

/** "host:port" of a test cluster, as `cluster upsert` takes it. */
export const addr = (x: TestCluster) => x.url.replace("http://", "");

/** Connects each cluster to the other. */
export async function connectBothWays(a: TestCluster, b: TestCluster): Promise<void> {
  await a.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(b) });
  await b.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(a) });
}

/**
 * Registers a global namespace on a and makes sure b has it with the same id. Namespace
 * replication may deliver it; until it does, the row is copied into b's database.
 */
export async function globalNamespace(a: TestCluster, b: TestCluster, name: string): Promise<string> {
  await a.client(WorkflowService).registerNamespace({ namespace: name, isGlobalNamespace: true, clusters: [a.name, b.name] });
  const [row] = await a.server.database.db.select().from(namespaces).where(eq(namespaces.name, name));
  await b.server.database.db.insert(namespaces).values(row!).onConflictDoNothing();
  return row!.id;
}

/** Each shard's last task id on x (0 for a shard without tasks). */
export const lastTaskIds = (x: TestCluster): Promise<Map<number, number>> => shardLastTaskIds(x.server.database.db);

/** Every event of a namespace, in a form two clusters must agree on exactly. */
export async function historiesOf(x: TestCluster, namespaceId: string) {
  const rows = await x.server.database.db
    .select()
    .from(historyEvents)
    .where(eq(historyEvents.namespaceId, namespaceId))
    .orderBy(asc(historyEvents.workflowId), asc(historyEvents.runId), asc(historyEvents.eventId));
  return rows.map((r) => ({ ...r, eventTime: r.eventTime.getTime() }));
}

/** Every execution's replicated state (shard and db version are per cluster). */
export async function executionsOf(x: TestCluster, namespaceId: string) {
  const rows = await x.server.database.db
    .select()
    .from(executions)
    .where(eq(executions.namespaceId, namespaceId))
    .orderBy(asc(executions.workflowId), asc(executions.runId));
  return rows.map(({ shardId: _s, dbVersion: _v, ...rest }) => rest);
}

/** Passes once b holds exactly a's histories and execution states of the namespace. */
export async function expectSameHistories(a: TestCluster, b: TestCluster, namespaceId: string): Promise<number> {
  const [ha, hb] = await Promise.all([historiesOf(a, namespaceId), historiesOf(b, namespaceId)]);
  expect(hb).toEqual(ha);
  expect(await executionsOf(b, namespaceId)).toEqual(await executionsOf(a, namespaceId));
  return ha.length;
}

/** An applier wrapper (serverOptions.replication.wrapApplier) that runs check before each apply, on either apply path: a fault injected by throwing. */
export const checkedApplier = (check: (task: Pick<IncomingTask, "workflowId" | "runId">) => void) => (inner: HistoryApplier): HistoryApplier => ({
  ...inner,
  async applyTask(tx, ns, task, fetchRaw) {
    check(task);
    return inner.applyTask(tx, ns, task, fetchRaw);
  },
  planApply(ns, task, reads) {
    check(task);
    return inner.planApply(ns, task, reads);
  },
});

/** A statement run through noted's db: its text, and its rows once it answered. */
export type NotedStatement = { sql: string; rows?: Record<string, unknown>[] };

/**
 * db as it is, but each statement it runs by its session (runStatement's way), in a transaction
 * too, noted in `ran` (in order) with its rows.
 */
export function notedStatements<D extends { _: { session: object } }>(db: D, ran: NotedStatement[] = []): { db: D; ran: NotedStatement[] } {
  const session = new Proxy(db._.session, {
    get(target, key) {
      const v = Reflect.get(target, key, target);
      if (key === "transaction") {
        return (fn: (tx: D) => unknown, ...rest: unknown[]) => v.call(target, (tx: D) => fn(notedStatements(tx, ran).db), ...rest);
      }
      if (key !== "prepareQuery") return typeof v === "function" ? v.bind(target) : v;
      return (q: { sql: string }, ...rest: unknown[]) => {
        const noted: NotedStatement = { sql: q.sql };
        ran.push(noted);
        const prepared = v.call(target, q, ...rest);
        const execute = prepared.execute.bind(prepared);
        prepared.execute = async (...args: unknown[]) => {
          const result = await execute(...args);
          // postgres.js answers the rows, PGlite a result holding them.
          noted.rows = (result as { rows?: Record<string, unknown>[] }).rows ?? (result as Record<string, unknown>[]);
          return result;
        };
        return prepared;
      };
    },
  });
  return { db: Object.assign(Object.create(db), { _: { ...db._, session }, session }) as D, ran };
}
