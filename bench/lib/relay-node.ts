/**
 * One side of the relay floor (bench/lib/relay-baseline.ts), run as its own process:
 *
 *   bun bench/lib/relay-node.ts source DB_URL   accepts POST /write (one row, committed, then
 *                                               kept in memory) and GET /pull?after=N (the rows
 *                                               past N, held until there are some);
 *   bun bench/lib/relay-node.ts sink DB_URL SOURCE_URL
 *                                               pulls from the source and inserts each answer in
 *                                               one statement, then pulls again.
 *
 * The least a JavaScript process pair can do for "committed on A → applied on B" over HTTP:
 * no protobuf, no outbox table, no cursors, no versions. The tables are made by the runner
 * (event-table.ts). Each prints "ready <port>" once it serves.
 */
import postgres from "postgres";
import { EVENT_ATTRIBUTES } from "./event-table";

/** A row as it travels: the source's committed values. */
interface RelayRow {
  namespace_id: string;
  workflow_id: string;
  run_id: string;
  event_id: number;
  version: number;
  event_time: string;
  event_type: string;
  attributes: unknown;
}

const [role, dbUrl, sourceUrl] = process.argv.slice(2);
if (!dbUrl || (role !== "source" && role !== "sink") || (role === "sink" && !sourceUrl)) {
  console.error("usage: bun bench/lib/relay-node.ts source DB_URL | sink DB_URL SOURCE_URL");
  process.exit(2);
}

if (role === "source") await serveSource(dbUrl);
else await runSink(dbUrl, sourceUrl!);

async function serveSource(url: string): Promise<void> {
  const sql = postgres(url, { max: 32, onnotice: () => {} });
  // rows[i] is row number first + i; rows up to the sink's `after` are dropped at its next pull.
  let rows: RelayRow[] = [];
  let first = 1;
  let waiters: (() => void)[] = [];
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    idleTimeout: 30,
    async fetch(req) {
      const u = new URL(req.url);
      if (u.pathname === "/write") {
        const w = (await req.json()) as { workflowId: string; runId: string; eventId: number };
        const [row] = await sql<RelayRow[]>`
          insert into events values ('bench', ${w.workflowId}, ${w.runId}, ${w.eventId}, 1, clock_timestamp(),
            'EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED', ${sql.json(EVENT_ATTRIBUTES)})
          returning namespace_id, workflow_id, run_id, event_id, version, event_time::text, event_type, attributes`;
        rows.push(row!);
        const woken = waiters;
        waiters = [];
        for (const wake of woken) wake();
        return new Response(null, { status: 204 });
      }
      if (u.pathname === "/pull") {
        const after = Number(u.searchParams.get("after") ?? 0);
        if (after >= first) {
          rows = rows.slice(after - first + 1);
          first = after + 1;
        }
        if (rows.length === 0) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, 5_000);
            waiters.push(() => (clearTimeout(timer), resolve()));
          });
        }
        return Response.json({ first, rows });
      }
      return new Response("not found", { status: 404 });
    },
  });
  console.log(`ready ${server.port}`);
}

async function runSink(url: string, source: string): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  await sql`select 1`;
  console.log("ready 0");
  let after = 0;
  for (;;) {
    const res = await fetch(`${source}/pull?after=${after}`).catch((e: Error) => {
      console.error(`pull failed: ${e.message}`);
      return undefined;
    });
    if (!res) {
      await Bun.sleep(100);
      continue;
    }
    const page = (await res.json()) as { first: number; rows: RelayRow[] };
    if (page.rows.length === 0) continue;
    await sql`insert into events select * from jsonb_populate_recordset(null::events, ${sql.json(page.rows as never)})`;
    after = page.first + page.rows.length - 1;
  }
}
