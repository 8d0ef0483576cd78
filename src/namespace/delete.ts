import { eq } from "drizzle-orm";
import type { Db } from "../persistence/database";
import { executions, historyBranchEvents, historyBranches, historyEvents, namespaces, replicationTasks, requestIds, timerTasks } from "../persistence/schema";
import type { NamespaceRegistry } from "./registry";

/** Deletes a namespace with every execution, event and task it holds, in one transaction. */
export async function deleteNamespace(db: Db, registry: NamespaceRegistry, name: string): Promise<{ executions: number }> {
  const ns = await registry.describe({ name });
  const deleted = await db.transaction(async (tx) => {
    const runs = await tx.delete(executions).where(eq(executions.namespaceId, ns.id)).returning({ runId: executions.runId });
    await tx.delete(historyEvents).where(eq(historyEvents.namespaceId, ns.id));
    await tx.delete(historyBranchEvents).where(eq(historyBranchEvents.namespaceId, ns.id));
    await tx.delete(historyBranches).where(eq(historyBranches.namespaceId, ns.id));
    await tx.delete(requestIds).where(eq(requestIds.namespaceId, ns.id));
    await tx.delete(timerTasks).where(eq(timerTasks.namespaceId, ns.id));
    await tx.delete(replicationTasks).where(eq(replicationTasks.namespaceId, ns.id));
    await tx.delete(namespaces).where(eq(namespaces.id, ns.id));
    return runs.length;
  });
  registry.invalidate(ns);
  return { executions: deleted };
}
