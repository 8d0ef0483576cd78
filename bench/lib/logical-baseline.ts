import postgres from "postgres";
import { runPaced, type PacedResult } from "./paced-load";
import { lagsByKey, type KeyedMs } from "./apply-stamps";
import type { PrivatePostgres } from "./private-postgres";
import { lagSummary, type LagSummary } from "./replication-report";

const COLUMNS = `namespace_id text not null, workflow_id text not null, run_id text not null, event_id bigint not null,
  version bigint not null, event_time timestamptz not null, event_type text not null, attributes jsonb not null`;
const ATTRIBUTES = { signalName: "bench", input: { payloads: [{ metadata: { encoding: "anNvbi9wbGFpbg==" }, data: "eyJvcmRlcklkIjoiby0xMjM0NTYiLCJxdHkiOjF9" }] }, identity: "bench" };

export interface LogicalResult {
  load: PacedResult;
  /** Insert (clock_timestamp on the publisher) → applied (subscriber trigger), ms. */
  lagMs: LagSummary;
  /** Commit on the publisher (its commit timestamp) → applied (subscriber trigger), ms. */
  commitLagMs: LagSummary;
  rows: number;
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
    await pub.unsafe(`create table events (${COLUMNS}, primary key (namespace_id, workflow_id, run_id, event_id));
      create publication bench_pub for table events;`);
    // In one instance CREATE SUBSCRIPTION cannot create its own slot (it would wait on itself).
    await pub`select pg_create_logical_replication_slot('bench_sub', 'pgoutput')`;
    await sub.unsafe(`create table events (${COLUMNS}, applied_at timestamptz, primary key (namespace_id, workflow_id, run_id, event_id));
      create function stamp() returns trigger language plpgsql as $$ begin new.applied_at := clock_timestamp(); return new; end $$;
      create trigger stamp before insert on events for each row execute function stamp();
      alter table events enable always trigger stamp;`);
    await sub.unsafe(`create subscription bench_sub connection '${pg.url("bench_pub")}' publication bench_pub with (create_slot = false, slot_name = 'bench_sub', copy_data = false)`);
    await Promise.all(Array.from({ length: o.clients }, () => pub`select 1`));
    // Warmed up as the tern steady phase is; only the measured run's rows count.
    const insertAs = (runId: string) => (client: number, seq: number) =>
      pub`insert into events values ('bench', ${`wf-${client}`}, ${runId}, ${seq + 1}, 1, clock_timestamp(),
        'EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED', ${pub.json(ATTRIBUTES)})`;
    await runPaced({ rate: o.rate, clients: o.clients, durationMs: o.warmupMs, op: insertAs("warmup") });
    const runId = crypto.randomUUID();
    const load = await runPaced({ rate: o.rate, clients: o.clients, durationMs: o.durationMs, op: insertAs(runId) });
    const [total] = await pub<{ n: string }[]>`select count(*) as n from events`;
    const t0 = performance.now();
    while (performance.now() - t0 < 30_000) {
      const [got] = await sub<{ m: string }[]>`select count(*) as m from events`;
      if (Number(got!.m) >= Number(total!.n)) break;
      await Bun.sleep(50);
    }
    // Each applied row once: its lag from the insert's stamp, and its apply time for the lag from the publisher's commit.
    const applied = await sub<(KeyedMs & { lag: number })[]>`
      select workflow_id || '/' || event_id as k, extract(epoch from applied_at) * 1000 as ms, extract(epoch from applied_at - event_time) * 1000 as lag
      from events where run_id = ${runId}`;
    const values = applied.map((r) => Number(r.lag));
    const committed = await pub<KeyedMs[]>`select workflow_id || '/' || event_id as k, extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000 as ms from events where run_id = ${runId}`;
    return { load, rows: values.length, lagMs: lagSummary(values), commitLagMs: lagSummary(lagsByKey(committed, applied)) };
  } finally {
    // No DROP SUBSCRIPTION: with its slot in the same instance it can hang; the instance is removed whole.
    await Promise.all([pub.end({ timeout: 2 }), sub.end({ timeout: 2 })]);
  }
}
