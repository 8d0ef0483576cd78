import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import postgres from "postgres";
import { cpuOf, cpuPerEvent, type CpuUsed } from "./cpu-usage";
import { appliedLags, SOURCE_EVENTS, STAMPED_EVENTS, type AppliedLags } from "./event-table";
import { runPaced, type PacedResult } from "./paced-load";
import { createTempDatabase } from "./pg-database";

/** The relay floor at the paced rate: the load on its source and how its sink applied it. */
export interface RelayResult extends AppliedLags {
  load: PacedResult;
  /** CPU ms per row of each relay process and its PostgreSQL backends, from the measured load's start until the sink had every row. */
  cpuMsPerEvent: { source: CpuUsed; sink: CpuUsed };
}

/** A relay process and the port it printed on "ready <port>". */
interface RelayProcess {
  pid: number;
  port: number;
  /** Its exit code and last output once it exited (it should not, before stop). */
  exited(): string | undefined;
  stop(): void;
}

async function startRelayNode(args: string[]): Promise<RelayProcess> {
  const child: ChildProcess = spawn(process.execPath, [join(import.meta.dir, "relay-node.ts"), ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`relay ${args[0]} not ready within 30 s:\n${output}`));
    }, 30_000);
    child.stderr!.on("data", (d: Buffer) => void (output += d.toString()));
    child.stdout!.on("data", (d: Buffer) => {
      output += d.toString();
      const m = /ready (\d+)/.exec(output);
      if (m) (clearTimeout(timer), resolve(Number(m[1])));
    });
    child.once("exit", (code) => (clearTimeout(timer), reject(new Error(`relay ${args[0]} exited with ${code}:\n${output}`))));
  });
  let exit: string | undefined;
  child.once("exit", (code, signal) => void (exit = `relay ${args[0]} exited (${code ?? signal}):\n${output.slice(-2000)}`));
  return { pid: child.pid!, port, exited: () => exit, stop: () => void child.kill("SIGKILL") };
}

/**
 * The floor of any design that moves a committed row from one JavaScript process to another
 * over HTTP and commits it on the other side (relay-node.ts): two databases on the server of
 * adminUrl, single-row writes at `rate` sent to the source over HTTP, the sink long-polling it.
 * The same rows, load and stamps as the logical-replication baseline.
 */
export async function runRelayBaseline(adminUrl: string, o: { rate: number; clients: number; durationMs: number; warmupMs: number }): Promise<RelayResult> {
  const [sourceDb, sinkDb] = [await createTempDatabase(adminUrl), await createTempDatabase(adminUrl)];
  const source = postgres(sourceDb.url, { max: 1, onnotice: () => {} });
  const sink = postgres(sinkDb.url, { max: 1, onnotice: () => {} });
  const nodes: RelayProcess[] = [];
  try {
    await source.unsafe(SOURCE_EVENTS);
    await sink.unsafe(STAMPED_EVENTS);
    const src = await startRelayNode(["source", sourceDb.url]);
    nodes.push(src);
    const base = `http://127.0.0.1:${src.port}`;
    nodes.push(await startRelayNode(["sink", sinkDb.url, base]));
    const writeAs = (runId: string) => async (client: number, seq: number) => {
      const res = await fetch(`${base}/write`, { method: "POST", body: JSON.stringify({ workflowId: `wf-${client}`, runId, eventId: seq + 1 }) });
      if (res.status !== 204) throw new Error(`relay write: HTTP ${res.status} ${await res.text()}`);
    };
    await runPaced({ rate: o.rate, clients: o.clients, durationMs: o.warmupMs, op: writeAs("warmup") });
    const runId = crypto.randomUUID();
    // cpuOf's "tern" is the relay process here.
    const sides = { source: { proc: src, sql: source }, sink: { proc: nodes[1]!, sql: sink } };
    const cpuNow = async () => ({ source: await cpuOf(sides.source), sink: await cpuOf(sides.sink) });
    const cpu0 = await cpuNow();
    const load = await runPaced({ rate: o.rate, clients: o.clients, durationMs: o.durationMs, op: writeAs(runId) });
    const lags = await appliedLags(source, sink, runId);
    const died = nodes.map((n) => n.exited()).find((e) => e !== undefined);
    if (died) throw new Error(died);
    const cpu = cpuPerEvent(cpu0, await cpuNow(), lags.rows);
    return { load, ...lags, cpuMsPerEvent: { source: cpu.source!, sink: cpu.sink! } };
  } finally {
    for (const n of nodes) n.stop();
    await Promise.all([source.end({ timeout: 2 }), sink.end({ timeout: 2 })]);
    await Promise.all([sourceDb.drop(), sinkDb.drop()]);
  }
}
