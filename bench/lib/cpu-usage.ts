import { readdirSync, readFileSync } from "node:fs";
import type { Sql } from "postgres";

/** CPU time used so far, ms: a cluster's server process, and its database's PostgreSQL backends. */
export interface CpuSample {
  tern: number;
  /** Per backend pid. */
  pg: Map<number, number>;
  /** The server's live threads by id (threadCpuMs). */
  threads: Map<number, ThreadCpu>;
}

/** CPU ms used between two samples. */
export interface CpuUsed {
  tern: number;
  pg: number;
  /** The server's by thread kind; the threads that ended between the samples are in `tern` only. */
  threads: Partial<Record<ThreadKind, number>>;
}

/** What a Bun server's threads do: run JavaScript, compile it, collect garbage, run fetch's HTTP client, or else. */
export type ThreadKind = "main" | "jit" | "gc" | "http client" | "other";

/** The kind of thread `name` (its /proc comm, at most 15 characters) is; the one whose id is the pid's is main. */
export function threadKind(name: string, tid: number, pid: number): ThreadKind {
  if (tid === pid) return "main";
  if (/JIT|JSCWarmUp|Wasm/.test(name)) return "jit";
  if (/HeapHelper|ollector|GC/.test(name)) return "gc";
  if (/HTTP Client/.test(name)) return "http client";
  return "other";
}

/** A thread's kind and the user + system ms it used so far. */
export interface ThreadCpu {
  kind: ThreadKind;
  ms: number;
}

/** Each live thread of pid by id (empty once the process is gone). */
export function threadCpuMs(pid: number): Map<number, ThreadCpu> {
  const threads = new Map<number, ThreadCpu>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return threads;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      threads.set(Number(tid), { kind: threadKind(stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")), Number(tid), pid), ms: ticksMs(stat) });
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return threads;
}

/**
 * The ms each kind of thread used between two samples: per thread alive at `after` (one new
 * since `before` counts from 0), so a thread that ended in between drops out rather than
 * taking its whole past off its kind.
 */
export function threadCpuUsed(before: Map<number, ThreadCpu>, after: Map<number, ThreadCpu>): Map<ThreadKind, number> {
  const used = new Map<ThreadKind, number>();
  for (const [tid, t] of after) used.set(t.kind, (used.get(t.kind) ?? 0) + t.ms - (before.get(tid)?.ms ?? 0));
  return used;
}

/** utime + stime of a /proc stat line, ms: the 12th and 13th fields after the command name. */
function ticksMs(stat: string): number {
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
}

/** user + system time of a process from /proc, ms (0 once it is gone). */
export function processCpuMs(pid: number): number {
  try {
    return ticksMs(readFileSync(`/proc/${pid}/stat`, "utf8"));
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
  return { tern: processCpuMs(c.proc.pid), pg: new Map(rows.map((r) => [r.pid, processCpuMs(r.pid)])), threads: threadCpuMs(c.proc.pid) };
}

/** CPU ms per event between two samples of each cluster (a backend new since `before` counts from 0). */
export function cpuPerEvent(before: Record<string, CpuSample>, after: Record<string, CpuSample>, events: number): Record<string, CpuUsed> {
  const per = (ms: number) => (events > 0 ? ms / events : Number.NaN);
  return Object.fromEntries(
    Object.entries(after).map(([name, a]) => {
      const b = before[name]!;
      const pg = [...a.pg].reduce((sum, [pid, ms]) => sum + ms - (b.pg.get(pid) ?? 0), 0);
      const threads = Object.fromEntries([...threadCpuUsed(b.threads, a.threads)].map(([kind, ms]) => [kind, per(ms)]));
      return [name, { tern: per(a.tern - b.tern), pg: per(pg), threads }];
    }),
  );
}
