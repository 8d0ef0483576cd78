import { expect } from "bun:test";
import type { HistoryApplier, IncomingTask, RawHistoryFetcher } from "../../replication/applier";
import { versionHistoryFromProto, versionHistoryUpTo } from "../../replication/version-history";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import type { HistoryEvent, VersionHistory } from "../../src/gen/tern/common/v1/common_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import type { NamespaceRecord, NamespaceRegistry } from "../../src/namespace/registry";
import type { Db, Tx } from "../../src/persistence/database";
import { addr, connectAll, describeOn, expectActiveOn } from "../failover/mesh";
import { eventually } from "../support/eventually";
import { json, unjson } from "../support/payload";
import type { TestCluster, TestClusterOptions } from "../support/server";

/** Enables or disables replication between x and y on both ends (pauses both ways, keeps positions). */
export async function setLink(x: TestCluster, y: TestCluster, enabled: boolean): Promise<void> {
  await x.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(y), enableRemoteClusterConnection: enabled });
  await y.client(OperatorService).addOrUpdateRemoteCluster({ frontendAddress: addr(x), enableRemoteClusterConnection: enabled });
}

/** The current branch of a run as x serves it (the workflow's latest run when runId is empty). */
export async function historyOf(x: TestCluster, namespace: string, workflowId: string, runId = ""): Promise<HistoryEvent[]> {
  const res = await x.client(WorkflowService).getWorkflowExecutionHistory({ namespace, execution: { workflowId, runId }, maximumPageSize: 1000 });
  return res.history!.events;
}

/** How a signal is recognised on any branch: its name and payload (a re-applied signal may get a new request id). */
export const signalKey = (name: string, payload: unknown) => `${name}=${JSON.stringify(payload)}`;

/** signalKey -> how many times the events hold that signal. */
export function signalCounts(events: HistoryEvent[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const e of events) {
    if (e.attributes.case !== "workflowExecutionSignaledEventAttributes") continue;
    const key = signalKey(e.attributes.value.signalName, unjson(e.attributes.value.input));
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

/** The request ids of the cancel requests among the events. */
export function cancelRequestIds(events: HistoryEvent[]): string[] {
  return events.flatMap((e) => (e.attributes.case === "workflowExecutionCancelRequestedEventAttributes" ? [e.attributes.value.requestId] : []));
}

/**
 * Breaches of "failover versions only grow": event ids 1, 2, 3... with non-decreasing
 * versions, and a version history whose items grow in event id and never shrink in
 * version and describe the events.
 */
export function versionBreaches(events: HistoryEvent[], history: VersionHistory | undefined): string[] {
  const out: string[] = [];
  events.forEach((e, i) => {
    if (e.eventId !== BigInt(i + 1)) out.push(`event #${i + 1} has id ${e.eventId}`);
    const prev = events[i - 1];
    if (prev && e.version < prev.version) out.push(`event ${e.eventId} has version ${e.version} after version ${prev.version}`);
  });
  const items = history?.items ?? [];
  items.forEach((item, i) => {
    const prev = items[i - 1];
    if (prev && (item.eventId <= prev.eventId || item.version < prev.version)) {
      out.push(`version history item ${i} {${item.eventId}, ${item.version}} after {${prev.eventId}, ${prev.version}}`);
    }
  });
  for (const e of events) {
    const covering = items.find((item) => item.eventId >= e.eventId);
    if (!covering || covering.version !== e.version) out.push(`event ${e.eventId} at version ${e.version} but version history says ${covering?.version}`);
  }
  return out;
}

/** Version breaches of a run's current branch on x, each naming the cluster and workflow. */
export async function versionBreachesOn(x: TestCluster, namespace: string, workflowId: string): Promise<string[]> {
  const [events, described] = await Promise.all([
    historyOf(x, namespace, workflowId),
    x.client(WorkflowService).describeWorkflowExecution({ namespace, execution: { workflowId } }),
  ]);
  return versionBreaches(events, described.versionHistory).map((b) => `${x.name} ${workflowId}: ${b}`);
}

/** What verifyReplication on x reports against y, one line per difference (empty: identical). */
export async function replicationDiff(x: TestCluster, y: TestCluster, namespace: string): Promise<string[]> {
  const res = await x.client(AdminService).verifyReplication({ namespace, cluster: y.name });
  const line = (kind: string) => (d: { workflowId: string; runId: string; local?: { eventCount: bigint }; remote?: { eventCount: bigint } }) =>
    `${x.name} vs ${y.name}: ${kind} ${d.workflowId}/${d.runId} (${d.local?.eventCount ?? "-"} events here, ${d.remote?.eventCount ?? "-"} there)`;
  return [...res.missing.map(line("missing")), ...res.extra.map(line("extra")), ...res.diverging.map(line("diverging")), ...res.behind.map(line("behind"))];
}

/** Expects verifyReplication to find no difference between any two of the clusters. */
export async function expectNoDifference(clusters: TestCluster[], namespace: string): Promise<void> {
  const diffs: string[] = [];
  for (let i = 0; i < clusters.length; i++) {
    for (let j = i + 1; j < clusters.length; j++) diffs.push(...(await replicationDiff(clusters[i]!, clusters[j]!, namespace)));
  }
  expect(diffs).toEqual([]);
}

/** Entries of x's replication DLQ, one line each (for failure messages). */
export async function dlqLines(x: TestCluster): Promise<string[]> {
  const res = await x.client(AdminService).listReplicationDlq({ pageSize: 20 });
  return res.entries.map((e) => `${x.name} DLQ from ${e.sourceCluster}: ${e.workflowId} [${e.firstEventId}, ${e.nextEventId}) v${e.version}: ${e.lastError}`);
}

/** Every branch of a run on x (the workflow's latest when runId is empty), one line each: version history and the signals it holds (for failure messages). */
export async function branchLines(x: TestCluster, namespace: string, workflowId: string, runId = ""): Promise<string[]> {
  const res = await x.client(AdminService).listHistoryBranches({ namespace, workflowId, runId });
  return res.branches.map((br) => {
    const items = (br.versionHistory?.items ?? []).map((i) => `${i.eventId}@${i.version}`).join(" ");
    const signals = br.events.flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [`${e.eventId}:${e.attributes.value.signalName}@${e.version}`] : []));
    return `${x.name} ${workflowId} branch ${br.branchId}${br.current ? " (current)" : ""} fork ${br.forkEventId} [${items}]: ${signals.join(" ")}`;
  });
}

/** A small seeded PRNG (mulberry32): the same seed gives the same sequence. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A cluster's history applier and namespace registry, taken from its server as it wires them. */
export interface Inside {
  applier?: HistoryApplier;
  namespaces?: NamespaceRegistry;
}

/** Options that start a cluster filling x with its applier and namespace registry. */
export const inside = (x: Inside): Partial<TestClusterOptions> => ({
  serverOptions: {
    wrapNamespaces: (r) => (x.namespaces = r),
    replication: { wrapApplier: (a) => (x.applier = a) },
  },
});

/**
 * tx, counting the rows its selects of history events (current or kept branches) and of
 * request ids return: every statement goes through the session's prepareQuery (drizzle's
 * builders and raw ones).
 */
export function countingEventReads(tx: Tx) {
  let rows = 0;
  const reads = /^\s*select\b[\s\S]*\bfrom\s+"(history_events|history_branch_events|request_ids)"/i;
  const session = tx._.session;
  const wrapped = new Proxy(session, {
    get(target, p, receiver) {
      if (p !== "prepareQuery") return Reflect.get(target, p, receiver);
      return (...args: Parameters<typeof session.prepareQuery>) => {
        const prepared = target.prepareQuery(...args);
        if (!reads.test(args[0].sql)) return prepared;
        const execute = prepared.execute.bind(prepared);
        prepared.execute = (async (...a: Parameters<typeof execute>) => {
          const result = await execute(...a);
          rows += Array.isArray(result) ? result.length : ((result as { rows?: unknown[] }).rows?.length ?? 0);
          return result;
        }) as typeof prepared.execute;
        return prepared;
      };
    },
  });
  const counted = new Proxy(tx, {
    get(target, p, receiver) {
      if (p === "session") return wrapped;
      if (p === "_") return { ...target._, session: wrapped };
      return Reflect.get(target, p, receiver);
    },
  });
  return { tx: counted as Tx, rows: () => rows };
}

/**
 * Brings events [first, next) of a run's current branch on source to receiver's applier,
 * `perPage` events a task, each applied in a transaction of its own as backfill does
 * (backfill-receiver.ts); returns the rows of events and request ids each apply read.
 */
export async function bringBranch(
  source: TestCluster, receiver: TestCluster, r: Inside, namespace: string, run: { workflowId: string; runId: string },
  first: number, next: number, perPage: number,
): Promise<number[]> {
  const ns: NamespaceRecord = await r.namespaces!.getByName(namespace);
  const ref = { namespaceId: ns.id, ...run };
  const raw = (from: number, before: number) =>
    source.client(AdminService).getWorkflowExecutionRawHistory({ ...ref, firstEventId: BigInt(from), nextEventId: BigInt(before) });
  const fetchRaw: RawHistoryFetcher = async (_task, from, before) => (await raw(from, before)).events;
  const reads: number[] = [];
  for (let from = first; from < next; from += perPage) {
    const page = await raw(from, Math.min(from + perPage, next));
    const last = Number(page.events.at(-1)!.eventId);
    const task: IncomingTask = {
      ...ref, firstEventId: from, nextEventId: last + 1, events: page.events,
      versionHistory: versionHistoryUpTo(versionHistoryFromProto(page.versionHistory?.items), last),
    };
    reads.push(await receiver.server.database.db.transaction(async (tx) => {
      const counted = countingEventReads(tx);
      await r.applier!.applyTask(counted.tx, ns, task, fetchRaw);
      return counted.rows();
    }));
  }
  return reads;
}

/**
 * A split brain on one run, as backfill meets it (DESIGN.md sections 4 and 6): `namespace` on
 * a (active, version 1) and b; `workflowId` started on a with one signal, "before", which b
 * holds; then, cut off, b is forced active (version 2) while a still believes it is, a writes
 * `signals` signals `a-i` of `payload` and b one, "b-0". The link stays off. Returns the run
 * id and a's branch (the one that loses).
 */
export async function splitOnOneRun(
  a: TestCluster, b: TestCluster, o: { namespace: string; workflowId: string; signals: number; payload: string },
): Promise<{ runId: string; aBranch: HistoryEvent[] }> {
  const { namespace, workflowId } = o;
  const wf = (x: TestCluster) => x.client(WorkflowService);
  const signal = (x: TestCluster, name: string, input?: string) =>
    wf(x).signalWorkflowExecution({ namespace, workflowExecution: { workflowId }, signalName: name, requestId: name, ...(input !== undefined && { input: json(input) }) });
  await connectAll([a, b]);
  await wf(a).registerNamespace({ namespace, isGlobalNamespace: true, clusters: [a.name, b.name] });
  await expectActiveOn(b, namespace, a.name, 1n);
  const { runId } = await wf(a).startWorkflowExecution({ namespace, workflowId, workflowType: "T", taskQueue: "q", requestId: "start" });
  await signal(a, "before");
  await eventually(async () => expect((await historyOf(b, namespace, workflowId)).length).toBe(2));
  await setLink(a, b, false);
  await wf(b).updateNamespace({ namespace, activeClusterName: b.name });
  expect((await describeOn(a, namespace)).failoverVersion).toBe(1n);
  for (let i = 0; i < o.signals; i++) await signal(a, `a-${i}`, o.payload);
  await signal(b, "b-0");
  const aBranch = await historyOf(a, namespace, workflowId);
  expect(aBranch.length).toBe(2 + o.signals);
  return { runId, aBranch };
}

/** Comparable form of events (eventTime and all). */
export const plainEvents = (events: HistoryEvent[]) => events.map((e) => JSON.stringify(e, (_k, v) => (typeof v === "bigint" ? String(v) : v)));

/** The names of the signals on x's current branch of a run, in order. */
export const signalNamesOf = async (x: TestCluster, namespace: string, workflowId: string) =>
  (await historyOf(x, namespace, workflowId)).flatMap((e) => (e.attributes.case === "workflowExecutionSignaledEventAttributes" ? [e.attributes.value.signalName] : []));

/**
 * What b holds once a backfill brought a's losing branch of a splitOnOneRun: the branch kept
 * whole, each event once as a wrote it; each of a's signals once on b's current branch, after
 * b's own; and a converged on b's branch. `context` says what b holds, for a failure.
 */
export async function expectLosingBranchKept(
  a: TestCluster, b: TestCluster, o: { namespace: string; workflowId: string; signals: number; payload: string; aBranch: HistoryEvent[] }, context: () => Promise<string>,
): Promise<void> {
  const { namespace, workflowId } = o;
  const branches = (await b.client(AdminService).listHistoryBranches({ namespace, workflowId })).branches;
  const lost = branches.filter((br) => !br.current);
  expect(lost.length, await context()).toBe(1);
  expect(plainEvents(lost[0]!.events), await context()).toEqual(plainEvents(o.aBranch));
  expect(await signalNamesOf(b, namespace, workflowId), await context()).toEqual(["before", "b-0", ...Array.from({ length: o.signals }, (_, i) => `a-${i}`)]);
  const counts = signalCounts(await historyOf(b, namespace, workflowId));
  for (let i = 0; i < o.signals; i++) expect(counts.get(signalKey(`a-${i}`, o.payload))).toBe(1);
  await eventually(async () => {
    await expectNoDifference([a, b], namespace);
    expect(plainEvents(await historyOf(a, namespace, workflowId))).toEqual(plainEvents(await historyOf(b, namespace, workflowId)));
  }, { timeout: 30_000 });
}

/**
 * db, whose first select from `table` (on db or in a transaction of it) waits for pause before it
 * runs: the moment between a read's statements where a test commits what races it. pause is told
 * whether the select runs in a transaction.
 */
export function pausingDb(db: Db, table: object, pause: (inTransaction: boolean) => Promise<unknown>): Db {
  let paused = false;
  /** q, whose statement runs once until has resolved; its builder methods go on returning the wrapper. */
  const after = (q: object, until: Promise<unknown>): object => {
    const wrapper: object = new Proxy(q, {
      get(target, p) {
        const value = Reflect.get(target, p) as unknown;
        if (p === "then") return (ok: (v: unknown) => unknown, fail: (e: unknown) => unknown) => until.then(() => (target as PromiseLike<unknown>).then(ok, fail), fail);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          const res = (value as (...a: unknown[]) => unknown).apply(target, args);
          return res === target ? wrapper : res;
        };
      },
    });
    return wrapper;
  };
  const wrap = (target: object, inTransaction: boolean): object => new Proxy(target, {
    get(t, p) {
      const value = Reflect.get(t, p) as unknown;
      if (typeof value !== "function") return value;
      const fn = value as (...a: unknown[]) => unknown;
      if (p === "transaction") return (body: (tx: object) => unknown, ...rest: unknown[]) => fn.call(t, (tx: object) => body(wrap(tx, true)), ...rest);
      if (p !== "select") return fn.bind(t);
      return (...args: unknown[]) => {
        const query = fn.apply(t, args) as { from: (table: object, ...rest: unknown[]) => object };
        return new Proxy(query, {
          get(q, qp) {
            const v = Reflect.get(q, qp) as unknown;
            if (qp !== "from") return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(q) : v;
            return (from: object, ...rest: unknown[]) => {
              const built = query.from(from, ...rest);
              if (from !== table || paused) return built;
              paused = true;
              return after(built, pause(inTransaction));
            };
          },
        });
      };
    },
  });
  return wrap(db, false) as Db;
}
