import type { HistoryApplier } from "../../replication/applier";
import type { Db } from "../../src/persistence/database";
import { runStatement } from "../../src/persistence/raw-statements";
import { checkedApplier } from "./support";

/**
 * Holds the next apply of a workflow (a merge's, not the ones after it) until released:
 * reached() resolves `held` and waits. Before its transaction, or inside it (the merge's
 * entry deleted, its apply to come).
 */
export function mergeGate(inside = false) {
  let release!: () => void;
  let held!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const heldNow = new Promise<void>((r) => (held = r));
  return { inside, held: heldNow, release, reached: () => (held(), released) };
}
export type MergeGate = ReturnType<typeof mergeGate>;

/** Holds a transaction of db's pool open, holding what the statement `hold` takes (taken: it has), until release() (done: it ended). */
export function holdingOpen(db: Db, hold: string, params: unknown[]) {
  let release!: () => void;
  let taken!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const tookIt = new Promise<void>((r) => (taken = r));
  const done = db.transaction(async (tx) => {
    await runStatement(tx, hold, params);
    taken();
    await released;
  });
  return { taken: tookIt, release, done };
}

/**
 * Fault injection through the server's deps, on either apply path: applies of the poisoned
 * workflow ids throw; those of a workflow id in outage throw a lost database connection (as
 * drizzle wraps postgres.js's) that many times, and those of one in busy PostgreSQL's
 * statement timeout.
 */
export function faultyApplier(poisoned: Set<string>, outage: Map<string, number>, busy: Map<string, number>, gates: Map<string, MergeGate>) {
  const check = (workflowId: string) => {
    if (poisoned.has(workflowId)) {
      if (workflowId !== "worse") throw new Error(`injected fault for ${workflowId}`);
      // As drizzle wraps PostgreSQL's refusal: the statement and its parameters (a caller's payload) in the message.
      const cause = Object.assign(new Error(`injected fault for ${workflowId}: new row violates check constraint`), { code: "23514", severity: "ERROR" });
      throw new Error("Failed query: insert into history_events ...\nparams: secret-card-4111", { cause });
    }
    for (const [faults, cause] of [
      [outage, Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" })],
      [busy, Object.assign(new Error("canceling statement due to statement timeout"), { code: "57014", severity: "ERROR" })],
    ] as const) {
      const left = faults.get(workflowId) ?? 0;
      if (left <= 0) continue;
      faults.set(workflowId, left - 1);
      throw new Error("Failed query: insert into history_events ...", { cause });
    }
  };
  const checked = checkedApplier((task) => check(task.workflowId));
  /** Waits at the gate of the first of workflowIds that has one at that point (inside a transaction or not). */
  const passGate = async (workflowIds: unknown[], inside: boolean) => {
    const gated = workflowIds.find((id) => typeof id === "string" && gates.get(id)?.inside === inside) as string | undefined;
    const gate = gated === undefined ? undefined : gates.get(gated);
    if (!gate) return;
    gates.delete(gated!);
    await gate.reached();
  };
  return (inner: HistoryApplier): HistoryApplier => {
    const outer = checked(inner);
    return {
      ...outer,
      async namespacesOf(tasks) {
        await passGate(tasks.map((t) => ("workflowId" in t ? t.workflowId : undefined)), false);
        return inner.namespacesOf(tasks);
      },
      async applyTask(tx, ns, task, fetchRaw) {
        await passGate([task.workflowId], true);
        return outer.applyTask(tx, ns, task, fetchRaw);
      },
    };
  };
}
