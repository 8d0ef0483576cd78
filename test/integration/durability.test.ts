import { setDefaultTimeout, afterAll, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "drizzle-orm";
import { EventType, WorkflowExecutionStatus } from "../../src/gen/tern/common/v1/common_pb";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { createLogger } from "../../src/observability/log";
import { openDatabase } from "../../src/persistence/database";
import { eventually } from "../support/eventually";
import { newDataLocation, startTestCluster } from "../support/server";
import { testStores } from "../support/stores";
import { rejects } from "../support/rejects";
import { serverStartTimeout } from "../support/timeouts";

setDefaultTimeout(serverStartTimeout);

const T = { workflowType: "t", taskQueue: "q" };
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

for (const store of await testStores()) {
  describe(`durability on ${store}`, () => {
    /** A cluster whose log lines the test reads, with its workflow client and database. */
    async function startLogging() {
      const logs: string[] = [];
      const cluster = await startTestCluster({ store, serverOptions: { log: createLogger({ level: "info", write: (l) => logs.push(l) }) } });
      cleanups.push(cluster.destroy); // destroy: stop leaves its database (a PostgreSQL one, a PGlite dir) behind
      return { logs, wf: cluster.client(WorkflowService), db: cluster.server.database.db };
    }

    test("an execution timeout fires through the timer queue, also after a restart", async () => {
      const data = await newDataLocation(store);
      cleanups.push(data.remove);
      let cluster = await startTestCluster({ store, dataLocation: data.location });
      let wf = cluster.client(WorkflowService);
      await wf.registerNamespace({ namespace: "timers" });
      await wf.startWorkflowExecution({ namespace: "timers", workflowId: "quick", ...T, workflowExecutionTimeout: durationFromMs(300) });
      await wf.startWorkflowExecution({ namespace: "timers", workflowId: "later", ...T, workflowExecutionTimeout: durationFromMs(2500) });
      await wf.startWorkflowExecution({ namespace: "timers", workflowId: "done", ...T, workflowExecutionTimeout: durationFromMs(400) });
      await wf.completeWorkflowExecution({ namespace: "timers", workflowExecution: { workflowId: "done" } });
      const status = async (id: string) =>
        (await wf.describeWorkflowExecution({ namespace: "timers", execution: { workflowId: id } })).workflowExecutionInfo!.status;
      await eventually(async () => expect(await status("quick")).toBe(WorkflowExecutionStatus.TIMED_OUT), { timeout: 5000 });
      expect(await status("later")).toBe(WorkflowExecutionStatus.RUNNING);
      await cluster.stop(); // "later" is due while the server is down
      await new Promise((r) => setTimeout(r, 2600 - 300));
      cluster = await startTestCluster({ store, dataLocation: data.location });
      cleanups.push(cluster.stop);
      wf = cluster.client(WorkflowService);
      await eventually(async () => expect(await status("later")).toBe(WorkflowExecutionStatus.TIMED_OUT), { timeout: 8000 });
      const events = (await wf.getWorkflowExecutionHistory({ namespace: "timers", execution: { workflowId: "later" } })).history!.events;
      expect(events.map((e) => e.eventType)).toEqual([EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_TIMED_OUT]);
      expect(await status("done")).toBe(WorkflowExecutionStatus.COMPLETED);
      const timers = await cluster.server.database.db.execute(sql`select count(*)::int as n from timer_tasks`);
      expect(JSON.stringify(timers)).toContain('"n":0');
    });

    test("a timer that fails to fire does not hold up the timers due after it, and fires once it can", async () => {
      const { logs, wf, db } = await startLogging();
      await wf.registerNamespace({ namespace: "poisoned" });
      // A fault of this one run's own, as a bad row or a bug would give: its events cannot be written.
      await db.execute(sql.raw(`create function refuse_poison() returns trigger language plpgsql as $$
        begin if new.workflow_id = 'poison' and new.event_id > 1 then raise exception 'refused for the test'; end if; return new; end $$`));
      await db.execute(sql.raw("create trigger refuse_poison before insert on history_events for each row execute function refuse_poison()"));
      const status = async (id: string) =>
        (await wf.describeWorkflowExecution({ namespace: "poisoned", execution: { workflowId: id } })).workflowExecutionInfo!.status;
      await wf.startWorkflowExecution({ namespace: "poisoned", workflowId: "poison", ...T, workflowExecutionTimeout: durationFromMs(200) });
      await wf.startWorkflowExecution({ namespace: "poisoned", workflowId: "behind-it", ...T, workflowExecutionTimeout: durationFromMs(400) });

      await eventually(async () => expect(await status("behind-it")).toBe(WorkflowExecutionStatus.TIMED_OUT), { timeout: 5000 });
      expect(await status("poison")).toBe(WorkflowExecutionStatus.RUNNING);
      const failed = () => logs.filter((l) => l.includes("timer failed to fire"));
      expect(failed()).toHaveLength(1);
      expect(failed()[0]).toContain("refused for the test");
      expect(failed()[0]).toContain('"workflowId":"poison"');

      await db.execute(sql.raw("drop trigger refuse_poison on history_events"));
      await eventually(async () => expect(await status("poison")).toBe(WorkflowExecutionStatus.TIMED_OUT), { timeout: 12_000, interval: 250 });
      expect(failed()).toHaveLength(1); // once, not once per scan
      expect(logs.some((l) => l.includes("timer fired after failing"))).toBe(true);
    });

    test("a timer due while its namespace is in HANDOVER is no failure: it waits quietly and fires once the handover ends", async () => {
      const { logs, wf, db } = await startLogging();
      await wf.registerNamespace({ namespace: "handing", isGlobalNamespace: true });
      await wf.registerNamespace({ namespace: "steady" });
      const status = async (namespace: string, id: string) =>
        (await wf.describeWorkflowExecution({ namespace, execution: { workflowId: id } })).workflowExecutionInfo!.status;
      await wf.startWorkflowExecution({ namespace: "handing", workflowId: "held", ...T, workflowExecutionTimeout: durationFromMs(200) });
      await wf.startWorkflowExecution({ namespace: "steady", workflowId: "after-it", ...T, workflowExecutionTimeout: durationFromMs(600) });
      // A graceful failover's HANDOVER, as its switch leaves the row until the target acked.
      await db.execute(sql`update namespaces set replication_state = 'HANDOVER' where name = 'handing'`);

      // The scans that fire after-it tried held first (due earlier).
      await eventually(async () => expect(await status("steady", "after-it")).toBe(WorkflowExecutionStatus.TIMED_OUT), { timeout: 5000 });
      expect(await status("handing", "held")).toBe(WorkflowExecutionStatus.RUNNING);
      expect(logs.filter((l) => l.includes("timer failed to fire"))).toEqual([]);

      await db.execute(sql`update namespaces set replication_state = 'NORMAL' where name = 'handing'`);
      await eventually(async () => expect(await status("handing", "held")).toBe(WorkflowExecutionStatus.TIMED_OUT), { timeout: 12_000, interval: 250 });
    });

    test("a global namespace's writes leave replication tasks in the same transaction as their events", async () => {
      let failNext = false;
      const cluster = await startTestCluster({
        store,
        serverOptions: {
          beforeCommit: () => {
            if (failNext) throw new Error("injected failure before commit");
          },
        },
      });
      cleanups.push(cluster.destroy);
      const wf = cluster.client(WorkflowService);
      const admin = cluster.client(AdminService);
      await wf.registerNamespace({ namespace: "glob", isGlobalNamespace: true });
      await wf.registerNamespace({ namespace: "local" });
      const { runId } = await wf.startWorkflowExecution({ namespace: "glob", workflowId: "g", ...T });
      await wf.signalWorkflowExecution({ namespace: "glob", workflowExecution: { workflowId: "g" }, signalName: "s" });
      await wf.startWorkflowExecution({ namespace: "local", workflowId: "l", ...T });
      failNext = true;
      await rejects(wf.signalWorkflowExecution({ namespace: "glob", workflowExecution: { workflowId: "g" }, signalName: "lost" }), Code.Internal, "internal error (request id");
      failNext = false;
      await wf.terminateWorkflowExecution({ namespace: "glob", workflowExecution: { workflowId: "g" }, reason: "end" });
      const tasks = [];
      for (let shard = 1; shard <= 4; shard++) {
        const res = await admin.getReplicationTasks({ shardId: shard, includeEvents: true });
        tasks.push(...res.tasks);
        if (res.tasks.length) expect(res.maxTaskId).toBe(res.tasks.at(-1)!.taskId);
      }
      // Three writes to the global run, none for the local one, none for the failed write.
      expect(tasks.map((t) => [t.workflowId, t.firstEventId, t.nextEventId])).toEqual([["g", 1n, 2n], ["g", 2n, 3n], ["g", 3n, 4n]]);
      expect(tasks.map((t) => t.taskId)).toEqual([1n, 2n, 3n]);
      expect(tasks.every((t) => t.runId === runId && t.version === 1n)).toBe(true);
      expect(tasks.flatMap((t) => t.events.map((e) => e.eventType))).toEqual([
        EventType.WORKFLOW_EXECUTION_STARTED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.WORKFLOW_EXECUTION_TERMINATED,
      ]);
      expect(tasks.at(-1)!.versionHistory!.items.map((i) => [i.eventId, i.version])).toEqual([[3n, 1n]]);
      const history = await wf.getWorkflowExecutionHistory({ namespace: "glob", execution: { workflowId: "g" } });
      expect(history.history!.events.length).toBe(3); // the failed signal left nothing behind
    });

    test("a restart with a different shard count, name or increment is refused", async () => {
      const data = await newDataLocation(store);
      cleanups.push(data.remove);
      const first = await startTestCluster({ store, dataLocation: data.location, name: "clusterA" });
      const id = first.server.cluster.clusterId;
      await first.stop();
      const refused = async (o: Parameters<typeof startTestCluster>[0], text: string) => {
        const e = await startTestCluster(o).then(async (c) => (await c.stop(), undefined), (err) => err as Error);
        expect(e?.message).toContain(text);
      };
      await refused({ store, dataLocation: data.location, name: "clusterA", shards: 8 }, "persistence.numHistoryShards is 8 in the config but 4 in the database");
      await refused({ store, dataLocation: data.location, name: "clusterZ" }, "clusterMetadata.currentClusterName is clusterZ in the config but clusterA");
      await refused({ store, dataLocation: data.location, name: "clusterA", failoverVersionIncrement: 10 }, "failoverVersionIncrement is 10");
      const again = await startTestCluster({ store, dataLocation: data.location, name: "clusterA" });
      expect(again.server.cluster.clusterId).toBe(id);
      await again.stop();
    });

    test("a schema newer than this build is refused", async () => {
      const data = await newDataLocation(store);
      cleanups.push(data.remove);
      const c = await startTestCluster({ store, dataLocation: data.location });
      await c.server.database.db.execute(sql`insert into drizzle.__drizzle_migrations (hash, created_at) values ('future', 99999999999999)`);
      await c.stop();
      const e = await startTestCluster({ store, dataLocation: data.location }).then(async (x) => (await x.stop(), undefined), (err) => err as Error);
      expect(e?.message).toBe("the database schema is newer than this tern build: 1 migration applied to it is unknown to this build; upgrade tern");
    });
  });
}

describe("PGlite data dir lock", () => {
  test("a second process is refused; a stale lock is taken over", async () => {
    const data = await newDataLocation("pglite");
    cleanups.push(data.remove);
    const c = await startTestCluster({ store: "pglite", dataLocation: data.location });
    // Another live process holding the lock: this test process's parent stands in for it.
    await c.stop();
    writeFileSync(join(data.location, "tern.lock"), String(process.ppid));
    const e = await startTestCluster({ store: "pglite", dataLocation: data.location }).then(async (x) => (await x.stop(), undefined), (err) => err as Error);
    // What to do, too: stop the holder, or start this one on another dir, with the setting and flag README names.
    expect(e?.message).toBe(
      `data dir ${data.location} is in use by process ${process.ppid} (lock ${join(data.location, "tern.lock")}); stop the tern server (or command) using it first, ` +
        "or give this server another data directory: a copy of its config file with another persistence.datastore.pglite.dataDir (and ports), started with --config PATH",
    );
    writeFileSync(join(data.location, "tern.lock"), "999999999"); // no such process: stale
    const again = await startTestCluster({ store: "pglite", dataLocation: data.location });
    await again.stop();
  });

  test.skipIf(!existsSync("/proc/self/stat"))("a lock whose pid now names another process (after a reboot, say), or a zombie, is stale and taken over", async () => {
    const data = await newDataLocation("pglite");
    cleanups.push(data.remove);
    const lock = join(data.location, "tern.lock");
    await (await startTestCluster({ store: "pglite", dataLocation: data.location })).stop();
    // The parent runs, but it is not the process that took the lock (another boot, another start time).
    writeFileSync(lock, `${process.ppid} 00000000-0000-0000-0000-000000000000/1`);
    await (await startTestCluster({ store: "pglite", dataLocation: data.location })).stop();
    // A child of a process that never reaps it: a zombie once it exits.
    const parent = Bun.spawn(["sh", "-c", "sleep 0.05 & echo $!; exec sleep 30"], { stdout: "pipe" });
    try {
      const { value } = await parent.stdout.getReader().read();
      const zombie = Number.parseInt(new TextDecoder().decode(value), 10);
      expect(zombie).toBeGreaterThan(0);
      await eventually(() => expect(readFileSync(`/proc/${zombie}/stat`, "utf8")).toMatch(/\) Z /));
      writeFileSync(lock, String(zombie));
      await (await startTestCluster({ store: "pglite", dataLocation: data.location })).stop();
    } finally {
      parent.kill();
    }
  });

  // Two containers sharing a data dir through a volume: neither sees the other's processes, and
  // both may be pid 1. A lock from another host was taken for this process's own leftover (same
  // pid) or for a dead process's (a pid not running here), and both opened the database.
  test("TestALockFromAnotherHostHoldsWhileItIsRenewed: even with this process's pid; taken over once it is not", async () => {
    const data = await newDataLocation("pglite");
    cleanups.push(data.remove);
    const lock = join(data.location, "tern.lock");
    await (await startTestCluster({ store: "pglite", dataLocation: data.location })).stop();
    writeFileSync(lock, `${process.pid} 00000000-0000-0000-0000-000000000000/1 other-container`);
    const e = await startTestCluster({ store: "pglite", dataLocation: data.location }).then(async (x) => (await x.stop(), undefined), (err) => err as Error);
    expect(e?.message).toContain(`is in use by process ${process.pid} on host other-container (lock ${lock}, renewed 0 s ago; a lock from another host is taken over once 30 s pass without renewal)`);
    expect(readFileSync(lock, "utf8")).toContain("other-container");
    // Its holder gone: 30 s without renewal.
    const old = new Date(Date.now() - 31_000);
    utimesSync(lock, old, old);
    const c = await startTestCluster({ store: "pglite", dataLocation: data.location });
    try {
      expect(readFileSync(lock, "utf8")).toBe(`${process.pid} ${readFileSync(lock, "utf8").split(" ")[1]} ${hostname()}`);
    } finally {
      await c.stop();
    }
    expect(existsSync(lock)).toBe(false);
  });

  test("TestAHeldLockIsRenewed, so that processes on other hosts see it held", async () => {
    const data = await newDataLocation("pglite");
    cleanups.push(data.remove);
    const lock = join(data.location, "tern.lock");
    const c = await startTestCluster({ store: "pglite", dataLocation: data.location });
    try {
      const old = new Date(Date.now() - 60_000);
      utimesSync(lock, old, old);
      await eventually(() => expect(Date.now() - statSync(lock).mtimeMs).toBeLessThan(10_000), { timeout: 15_000 });
    } finally {
      await c.stop();
    }
  });

  test("TestProcessesStartingAtOnceOnOneDir: one holds the lock, on a new dir and on a stale lock alike", async () => {
    const data = await newDataLocation("pglite");
    cleanups.push(data.remove);
    const contender = fileURLToPath(new URL("../support/lock-contender.ts", import.meta.url));
    for (let round = 0; round < 16; round++) {
      const dir = join(data.location, `r${round}`);
      mkdirSync(dir);
      // Half the rounds after a crash (a lock whose owner is gone), half after a clean stop (none).
      if (round % 2) writeFileSync(join(dir, "tern.lock"), "999999999");
      const at = Date.now() + 700;
      const said = await Promise.all(
        [0, 1, 2].map((_) => new Response(Bun.spawn([process.execPath, contender, dir, String(at)], { stdout: "pipe" }).stdout).text()),
      );
      expect({ round, held: said.filter((s) => s.trim() === "held").length }).toEqual({ round, held: 1 });
    }
  });

  test("a data dir that is a file, or holds files but no database, is refused by name; nothing is written to it; one holding another tern data dir is not", async () => {
    const data = await newDataLocation("pglite");
    cleanups.push(data.remove);
    const file = join(data.location, "a-file");
    writeFileSync(file, "not a directory");
    await expect(openDatabase({ pglite: { dataDir: file } })).rejects.toThrow(`the PGlite data directory ${file} (persistence.datastore.pglite.dataDir) is not a directory`);
    const notes = join(data.location, "notes");
    mkdirSync(notes);
    writeFileSync(join(notes, "todo.txt"), "mine");
    await expect(openDatabase({ pglite: { dataDir: notes } })).rejects.toThrow(`the PGlite data directory ${notes} (persistence.datastore.pglite.dataDir) holds files but no database`);
    expect(readdirSync(notes)).toEqual(["todo.txt"]);
    // Another tern data dir inside is no stranger's file: the shipped configs nested ./data/cluster-a in ./data (before ./data-cluster-a).
    const outer = join(data.location, "data");
    mkdirSync(join(outer, "cluster-a"), { recursive: true });
    writeFileSync(join(outer, "cluster-a", "PG_VERSION"), "17");
    const opened = await openDatabase({ pglite: { dataDir: outer } });
    await opened.close();
    expect(readdirSync(outer)).toContain("PG_VERSION");
  });
});
