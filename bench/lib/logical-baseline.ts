import postgres from "postgres";
import { runPaced, type PacedResult } from "./paced-load";
import type { PrivatePostgres } from "./private-postgres";
import { appliedLags, EVENT_ATTRIBUTES, type AppliedLags, SOURCE_EVENTS, STAMPED_EVENTS } from "./event-table";

/** Logical replication at the paced rate: the publisher's load and how the subscriber applied it. */
export interface LogicalResult extends AppliedLags {
  load: PacedResult;
}

/**
 * PostgreSQL's own logical replication of a history_events-like table between two
 * databases of `pg`: single-row inserts at `rate` on the publisher, each stamped with
 * clock_timestamp(); the subscriber's ALWAYS trigger stamps applied_at.
 */
export async function runLogicalBaseline(pg: PrivatePostgres, o: { rate: number; clients: number; durationMs: number; warmupMs: number }): Promise<LogicalResult> {
  const admin = postgres(pg.url("postgres"), { max: 1, onnotice: () => {} });
  await admin.unsafe("create database bench_pub");
  await admin.unsafe("create database bench_sub");
  await admin.end();
  const pub = postgres(pg.url("bench_pub"), { max: o.clients, onnotice: () => {} });
  const sub = postgres(pg.url("bench_sub"), { max: 1, onnotice: () => {} });
  try {
    await pub.unsafe(`${SOURCE_EVENTS}; create publication bench_pub for table events;`);
    // In one instance CREATE SUBSCRIPTION cannot create its own slot (it would wait on itself).
    await pub`select pg_create_logical_replication_slot('bench_sub', 'pgoutput')`;
    await sub.unsafe(STAMPED_EVENTS);
    await sub.unsafe(`create subscription bench_sub connection '${pg.url("bench_pub")}' publication bench_pub with (create_slot = false, slot_name = 'bench_sub', copy_data = false)`);
    await Promise.all(Array.from({ length: o.clients }, () => pub`select 1`));
    // Warmed up as the tern steady phase is; only the measured run's rows count.
    const insertAs = (runId: string) => (client: number, seq: number) =>
      pub`insert into events values ('bench', ${`wf-${client}`}, ${runId}, ${seq + 1}, 1, clock_timestamp(),
        'EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED', ${pub.json(EVENT_ATTRIBUTES)})`;
    await runPaced({ rate: o.rate, clients: o.clients, durationMs: o.warmupMs, op: insertAs("warmup") });
    const runId = crypto.randomUUID();
    const load = await runPaced({ rate: o.rate, clients: o.clients, durationMs: o.durationMs, op: insertAs(runId) });
    return { load, ...(await appliedLags(pub, sub, runId)) };
  } finally {
    // No DROP SUBSCRIPTION: with its slot in the same instance it can hang; the instance is removed whole.
    await Promise.all([pub.end({ timeout: 2 }), sub.end({ timeout: 2 })]);
  }
}
