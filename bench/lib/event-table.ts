import type { Sql } from "postgres";
import { lagsByKey, type KeyedMs } from "./apply-stamps";
import { lagSummary, type LagSummary } from "./replication-report";

/** The history_events-like table the PostgreSQL baselines (logical replication, relay floor) replicate. */
export const EVENT_COLUMNS = `namespace_id text not null, workflow_id text not null, run_id text not null, event_id bigint not null,
  version bigint not null, event_time timestamptz not null, event_type text not null, attributes jsonb not null`;

/** Roughly what tern stores for a signal event. */
export const EVENT_ATTRIBUTES = { signalName: "bench", input: { payloads: [{ metadata: { encoding: "anNvbi9wbGFpbg==" }, data: "eyJvcmRlcklkIjoiby0xMjM0NTYiLCJxdHkiOjF9" }] }, identity: "bench" };

/** The source side's table. */
export const SOURCE_EVENTS = `create table events (${EVENT_COLUMNS}, primary key (namespace_id, workflow_id, run_id, event_id))`;

/**
 * The receiving side's table: the same, and applied_at, stamped by a trigger with
 * clock_timestamp() as each row is inserted there (ALWAYS, so it also fires in a
 * logical-replication apply worker).
 */
export const STAMPED_EVENTS = `create table events (${EVENT_COLUMNS}, applied_at timestamptz, primary key (namespace_id, workflow_id, run_id, event_id));
  create function stamp() returns trigger language plpgsql as $$ begin new.applied_at := clock_timestamp(); return new; end $$;
  create trigger stamp before insert on events for each row execute function stamp();
  alter table events enable always trigger stamp;`;

/** How the rows of one run reached the receiving side. */
export interface AppliedLags {
  /** Source's clock_timestamp() in the insert → applied_at, ms. */
  lagMs: LagSummary;
  /** Source's commit (its commit timestamp) → applied_at, ms; absent where the source keeps no commit timestamps. */
  commitLagMs?: LagSummary;
  rows: number;
}

/** Waits (up to 30 s) until the receiving side has every source row, then the lags of run `runId`'s rows. */
export async function appliedLags(source: Sql, sink: Sql, runId: string): Promise<AppliedLags> {
  const [total] = await source<{ n: string }[]>`select count(*) as n from events`;
  const t0 = performance.now();
  while (performance.now() - t0 < 30_000) {
    const [got] = await sink<{ m: string }[]>`select count(*) as m from events`;
    if (Number(got!.m) >= Number(total!.n)) break;
    await Bun.sleep(50);
  }
  // Each applied row once: its lag from the insert's stamp, and its apply time for the lag from the source's commit.
  const applied = await sink<(KeyedMs & { lag: number })[]>`
    select workflow_id || '/' || event_id as k, extract(epoch from applied_at) * 1000 as ms, extract(epoch from applied_at - event_time) * 1000 as lag
    from events where run_id = ${runId}`;
  const lagMs = lagSummary(applied.map((r) => Number(r.lag)));
  const [setting] = await source<{ track_commit_timestamp: string }[]>`show track_commit_timestamp`;
  if (setting?.track_commit_timestamp !== "on") return { lagMs, rows: applied.length };
  const committed = await source<KeyedMs[]>`select workflow_id || '/' || event_id as k, extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000 as ms from events where run_id = ${runId}`;
  return { lagMs, commitLagMs: lagSummary(lagsByKey(committed, applied)), rows: applied.length };
}
