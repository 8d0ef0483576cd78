import postgres from "postgres";
import { runLoad, type LoadResult } from "./load";

/** Same columns and primary key as tern's history_events. */
const CREATE_TABLE = `
  create table if not exists bench_history_events (
    namespace_id text not null,
    workflow_id text not null,
    run_id text not null,
    event_id bigint not null,
    version bigint not null,
    event_time timestamptz not null,
    event_type text not null,
    attributes jsonb not null,
    primary key (namespace_id, workflow_id, run_id, event_id)
  )`;

/** Roughly what tern stores for a signal event. */
const ATTRIBUTES = {
  signalName: "bench",
  input: { payloads: [{ metadata: { encoding: "anNvbi9wbGFpbg==" }, data: "eyJvcmRlcklkIjoiby0xMjM0NTYiLCJxdHkiOjF9" }] },
  identity: "bench",
  requestId: "00000000-0000-0000-0000-000000000000",
};

export interface BaselineOptions {
  url: string;
  clients: number;
  warmupMs: number;
  durationMs: number;
}

/**
 * Raw single-row INSERT transactions (autocommit, one round trip each) into a
 * history_events-like table, with a postgres.js pool of exactly `clients` connections.
 */
export async function runInsertBaseline({ url, clients, warmupMs, durationMs }: BaselineOptions): Promise<LoadResult> {
  const sql = postgres(url, { max: clients, onnotice: () => {} });
  try {
    await sql.unsafe(CREATE_TABLE);
    const runId = crypto.randomUUID();
    // Open every connection before timing starts.
    await Promise.all(Array.from({ length: clients }, () => sql`select 1`));
    return await runLoad({
      clients,
      warmupMs,
      durationMs,
      op: (client, seq) => sql`
        insert into bench_history_events
          (namespace_id, workflow_id, run_id, event_id, version, event_time, event_type, attributes)
        values ('bench', ${`wf-${client}`}, ${runId}, ${seq + 1}, 0, now(),
          'EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED', ${sql.json(ATTRIBUTES)})`,
    });
  } finally {
    await sql.end({ timeout: 5 });
  }
}
