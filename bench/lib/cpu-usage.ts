import { readFileSync } from "node:fs";
import type { Sql } from "postgres";

/** CPU time used so far, ms: a cluster's server process, and its database's PostgreSQL backends. */
export interface CpuSample {
  tern: number;
  /** Per backend pid. */
  pg: Map<number, number>;
}

/** CPU ms used between two samples. */
export interface CpuUsed {
  tern: number;
  pg: number;
}

/** user + system time of a process from /proc, ms (0 once it is gone). */
export function processCpuMs(pid: number): number {
  try {
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return 0;
  }
}

/**
 * The CPU a cluster used so far. On a shared machine, CPU per event is a steadier A/B
 * figure than throughput, which moves with whatever else runs. A backend that closes
 * between two samples drops out; the servers' pools keep theirs open.
 */
export async function cpuOf(c: { proc: { pid: number }; sql: Sql }): Promise<CpuSample> {
  const rows = await c.sql<{ pid: number }[]>`select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`;
  return { tern: processCpuMs(c.proc.pid), pg: new Map(rows.map((r) => [r.pid, processCpuMs(r.pid)])) };
}

/** CPU ms per event between two samples of each cluster (a backend new since `before` counts from 0). */
export function cpuPerEvent(before: Record<string, CpuSample>, after: Record<string, CpuSample>, events: number): Record<string, CpuUsed> {
  const per = (ms: number) => (events > 0 ? ms / events : Number.NaN);
  return Object.fromEntries(
    Object.entries(after).map(([name, a]) => {
      const b = before[name]!;
      const pg = [...a.pg].reduce((sum, [pid, ms]) => sum + ms - (b.pg.get(pid) ?? 0), 0);
      return [name, { tern: per(a.tern - b.tern), pg: per(pg) }];
    }),
  );
}
