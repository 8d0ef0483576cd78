import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { create, fromBinary } from "@bufbuild/protobuf";
import { and, eq, gt, sql } from "drizzle-orm";
import { renderedBytesBound } from "../../replication/run-digest";
import { createReplicationVerifier } from "../../replication/verification";
import { createRemoteClientPool } from "../../src/cluster/remote-client";
import { AdminService, GetExecutionChecksumsRequestSchema, VerifyReplicationRequestSchema, type ExecutionChecksum } from "../../src/gen/tern/admin/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";
import { rowsOf } from "../../src/persistence/raw-statements";
import { executions, historyEvents as h } from "../../src/persistence/schema";
import { json } from "../support/payload";
import { startTestCluster, type TestCluster } from "../support/server";
import { testEnv } from "../support/env";
import { testStores } from "../support/stores";
import { eventually } from "../support/eventually";
import { connectAll, startClusters } from "../failover/mesh";
import { expectSameHistories, globalNamespace } from "./support";

setDefaultTimeout(300_000);

const NS = "bulky";
const MiB = 1 << 20;
/** Fourteen signals of 60 MiB: their attributes render to 1.17 GB of text, past a PostgreSQL value's 1 GB. */
const SIGNALS = 14;
const SIGNAL_BYTES = 60 * MiB;
const T = { workflowType: "T", taskQueue: "q" };

// The paged digest (for runs past SQL_DIGEST_BYTES) agrees with the SQL one: every run digested in pages here.
for (const store of await testStores()) {
  describe(`verify on ${store}: runs digested a page of events at a time`, () => {
    let x: TestCluster;
    const runs: { workflowId: string; runId: string; eventCount: bigint }[] = [];
    beforeAll(async () => {
      x = await startTestCluster({ store });
      const wf = x.client(WorkflowService);
      await wf.registerNamespace({ namespace: NS });
      for (const [workflowId, signals] of [["none", 0], ["some", 3], ["many", 40]] as const) {
        const { runId } = await wf.startWorkflowExecution({ namespace: NS, workflowId, ...T });
        // Events of unlike sizes, so the pages' sizes (sized by the last page's events) change along the run.
        for (let i = 0; i < signals; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId }, signalName: `s${i}`, input: json({ i, text: "ünïcode ✓".repeat(i % 7 === 0 ? 20_000 : 1) }) });
        runs.push({ workflowId, runId, eventCount: BigInt(signals + 1) });
      }
    });
    afterAll(() => x?.destroy());

    test("TestPagedDigestEqualsTheSqlOne: whole runs, pages of checksums, and prefixes", async () => {
      const deps = { db: x.server.database.db, cluster: x.server.cluster, clients: createRemoteClientPool() };
      const inSql = createReplicationVerifier(deps);
      const inPages = createReplicationVerifier({ ...deps, sqlDigestBytes: 0 });
      const rows = (r: { executions: { workflowId: string; eventCount: bigint; checksum: string }[] }) => r.executions.map((e) => `${e.workflowId}/${e.eventCount}/${e.checksum}`).sort();
      const whole = { namespace: NS, pageSize: 2, nextPageToken: new Uint8Array(0) };
      const [a, b] = await Promise.all([inSql.checksums(whole), inPages.checksums(whole)]);
      expect(rows(b)).toEqual(rows(a));
      expect(rows(a)).toHaveLength(2);
      const prefixes = { ...whole, pageSize: 0, prefixes: runs.flatMap((r) => [r, { ...r, eventCount: r.eventCount / 2n + 1n }]) };
      const [c, d] = await Promise.all([inSql.checksums(prefixes), inPages.checksums(prefixes)]);
      expect(rows(d)).toEqual(rows(c));
      expect(new Set(rows(c).map((r) => r.split("/")[2])).size).toBe(5); // "none" has one prefix, the others two
    });

    /** Every page of a walk, and how many calls it took. */
    async function walk(v: ReturnType<typeof createReplicationVerifier>, from: Uint8Array = new Uint8Array(0)) {
      let token = from;
      let calls = 0;
      const found: string[] = [];
      const pages: string[][] = [];
      do {
        const page = await v.checksums({ namespace: NS, pageSize: 1000, nextPageToken: token });
        found.push(...page.executions.map((e) => `${e.workflowId}/${e.eventCount}/${e.checksum}`));
        pages.push(page.executions.map((e) => e.workflowId));
        token = page.nextPageToken;
        calls++;
      } while (token.length && calls < 1000);
      return { found, calls, pages };
    }

    test("TestALargeRunIsDigestedOverSeveralCalls: a page answers when its time is up, its token carrying the digest so far", async () => {
      const deps = { db: x.server.database.db, cluster: x.server.cluster, clients: createRemoteClientPool() };
      const whole = await walk(createReplicationVerifier(deps));
      expect(whole.calls).toBe(1);
      // No time for large runs: each call digests one page of events of one run (8 events, then about 8 MB's worth).
      const stepwise = await walk(createReplicationVerifier({ ...deps, sqlDigestBytes: 0, pageWorkMs: 0 }));
      expect(stepwise.found).toEqual(whole.found);
      expect(stepwise.calls).toBeGreaterThan(3);
      // A server of an older build sharing the database takes such a token as a plain one: it
      // ignores the run's progress (here, dropped) and digests that run whole.
      const first = await createReplicationVerifier({ ...deps, sqlDigestBytes: 0, pageWorkMs: 0 }).checksums({ namespace: NS, pageSize: 1000, nextPageToken: new Uint8Array(0) });
      const { p, ...plain } = JSON.parse(new TextDecoder().decode(first.nextPageToken));
      expect([first.executions.length, p.w, plain]).toEqual([0, "many", { w: "", r: "" }]);
      const rest = await walk(createReplicationVerifier(deps), new TextEncoder().encode(JSON.stringify(plain)));
      expect(rest.found).toEqual(whole.found);
      // A token whose digest state could not have been written by a server is refused.
      const forged = new TextEncoder().encode(JSON.stringify({ ...plain, p: { ...p, md5: { ...p.md5, tail: btoa("x".repeat(64)) } } }));
      await expect(createReplicationVerifier(deps).checksums({ namespace: NS, pageSize: 1000, nextPageToken: forged })).rejects.toThrow("next_page_token is not valid");
    });

    test("TestARunRewrittenBetweenTwoCallsIsDigestedAnew: a conflict settled between two pages leaves no digest of two branches", async () => {
      const db = x.server.database.db;
      const deps = { db, cluster: x.server.cluster, clients: createRemoteClientPool() };
      const stepwise = createReplicationVerifier({ ...deps, sqlDigestBytes: 0, pageWorkMs: 0 });
      const first = await stepwise.checksums({ namespace: NS, pageSize: 1000, nextPageToken: new Uint8Array(0) });
      const { p } = JSON.parse(new TextDecoder().decode(first.nextPageToken));
      expect([p.w, p.after]).toEqual(["many", 8]);
      // As a conflict settled on a branch forked at event 5 does: events 5 on at a higher version, and the run's version history.
      const [row] = await db.select({ vh: executions.versionHistory }).from(executions).where(eq(executions.workflowId, "many"));
      const version = row!.vh[0]!.version;
      try {
        await db.update(h).set({ version: version + 5 }).where(and(eq(h.workflowId, "many"), gt(h.eventId, 4)));
        await db.update(executions).set({ versionHistory: [{ eventId: 4, version }, { eventId: 41, version: version + 5 }] }).where(eq(executions.workflowId, "many"));
        const rest = await walk(stepwise, first.nextPageToken);
        expect(rest.found).toEqual((await walk(createReplicationVerifier(deps))).found);
      } finally {
        await db.update(h).set({ version }).where(eq(h.workflowId, "many"));
        await db.update(executions).set({ versionHistory: row!.vh }).where(eq(executions.workflowId, "many"));
      }
    });

    test("TestAPrefixIsDigestedOverSeveralCalls: an answer for prefixes answers when its time is up, its token carrying the digest so far", async () => {
      const deps = { db: x.server.database.db, cluster: x.server.cluster, clients: createRemoteClientPool() };
      const rows = (r: { executions: ExecutionChecksum[] }) => r.executions.map((e) => `${e.workflowId}/${e.eventCount}/${e.checksum}`);
      const prefixes = runs.flatMap((r) => [r, { ...r, eventCount: r.eventCount / 2n + 1n }]);
      const whole = await createReplicationVerifier(deps).checksums({ namespace: NS, pageSize: 0, nextPageToken: new Uint8Array(0), prefixes });
      // No time for large runs: each call digests one page of events of one prefix.
      const stepwise = createReplicationVerifier({ ...deps, sqlDigestBytes: 0, pageWorkMs: 0 });
      const found: string[] = [];
      let token: Uint8Array = new Uint8Array(0);
      let calls = 0;
      do {
        const res = await stepwise.checksums({ namespace: NS, pageSize: 1000, nextPageToken: token, prefixes });
        found.push(...rows(res));
        token = res.nextPageToken;
        calls++;
      } while (token.length && calls < 1000);
      expect(found.sort()).toEqual(rows(whole).sort());
      expect(calls).toBeGreaterThan(3);
      // A caller from before (no page size) gets every prefix in one answer, however long it takes.
      const old = await stepwise.checksums({ namespace: NS, pageSize: 0, nextPageToken: new Uint8Array(0), prefixes });
      expect([rows(old).sort(), old.nextPageToken.length]).toEqual([rows(whole).sort(), 0]);
    });

    test("TestAPageDigestsAboutSqlDigestBytesInSql: the runs after it wait for the next page", async () => {
      const db = x.server.database.db;
      const bounds = rowsOf(await db.execute(sql`select ${h.workflowId} as w, ${renderedBytesBound}::float8 as bound from ${h} group by ${h.workflowId} order by 1`)) as { w: string; bound: number }[];
      expect(bounds.map((b) => b.w)).toEqual(["many", "none", "some"]);
      // All three digested in SQL, but "many" and "none" already hold the limit: "some" waits.
      const limit = bounds[0]!.bound;
      expect(limit).toBeLessThan(bounds[0]!.bound + bounds[1]!.bound);
      const pages = await walk(createReplicationVerifier({ db, cluster: x.server.cluster, clients: createRemoteClientPool(), sqlDigestBytes: limit }));
      expect(pages.pages).toEqual([["many", "none"], ["some"]]);
      expect(pages.found).toEqual((await walk(createReplicationVerifier({ db, cluster: x.server.cluster, clients: createRemoteClientPool() }))).found);
    });
  });
}

// Prefixes digested over several calls on both sides still tell a history that is the start of
// the other's (behind) from one that is not (diverging).
for (const store of await testStores()) {
  describe(`verify on ${store}: prefixes digested over several calls`, () => {
    let a: TestCluster, b: TestCluster;
    let nsId: string;
    const PREFIXED = "prefixed";
    beforeAll(async () => {
      // B digests large runs (every run here) for no time at all per call, as A's verifier below does.
      [a, b] = await startClusters(store, [{}, { serverOptions: { replication: { verify: { sqlDigestBytes: 0, pageWorkMs: 0 } } } }]);
      await connectAll([a, b]);
      nsId = await globalNamespace(a, b, PREFIXED);
      const wf = a.client(WorkflowService);
      for (const workflowId of ["behind-here", "behind-there", "forked-here", "forked-there"]) {
        await wf.startWorkflowExecution({ namespace: PREFIXED, workflowId, ...T });
        for (let i = 0; i < 20; i++) await wf.signalWorkflowExecution({ namespace: PREFIXED, workflowExecution: { workflowId }, signalName: `s${i}`, input: json({ i }) });
      }
      await eventually(() => expectSameHistories(a, b, nsId), { timeout: 60_000 });
    });
    afterAll(() => Promise.all([a?.destroy(), b?.destroy()]));

    test("TestAPrefixOverSeveralCallsIsBehindAndAWrongOneDiverging: on this cluster and on the remote", async () => {
      const run = (workflowId: string) => and(eq(h.namespaceId, nsId), eq(h.workflowId, workflowId));
      // The shorter side lost events 13-21; on the forked runs it also wrote event 5 otherwise.
      for (const [x, here] of [[a, "here"], [b, "there"]] as const) {
        await x.server.database.db.delete(h).where(and(run(`behind-${here}`), gt(h.eventId, 12)));
        await x.server.database.db.delete(h).where(and(run(`forked-${here}`), gt(h.eventId, 12)));
        await x.server.database.db.update(h).set({ version: 99 }).where(and(run(`forked-${here}`), eq(h.eventId, 5)));
      }
      // A's verifier, which digests no longer than B per call; the prefix calls it makes to B counted.
      let remotePrefixCalls = 0;
      const counting = (async (input: RequestInfo | URL, init?: RequestInit) => {
        if (String(input).endsWith("/GetExecutionChecksums") && fromBinary(GetExecutionChecksumsRequestSchema, init!.body as Uint8Array).prefixes.length) remotePrefixCalls++;
        return fetch(input, init);
      }) as typeof fetch;
      const verifier = createReplicationVerifier({ db: a.server.database.db, cluster: a.server.cluster, clients: createRemoteClientPool(counting), sqlDigestBytes: 0, pageWorkMs: 0 });
      const res = await verifier.verify(create(VerifyReplicationRequestSchema, { namespace: PREFIXED, cluster: "clusterB" }));
      const counts = (d: { workflowId: string; local?: { eventCount: bigint }; remote?: { eventCount: bigint } }) => [d.workflowId, d.local!.eventCount, d.remote!.eventCount];
      expect(res.behind.map(counts)).toEqual([["behind-here", 12n, 21n], ["behind-there", 21n, 12n]]);
      expect(res.diverging.map(counts)).toEqual([["forked-here", 12n, 21n], ["forked-there", 21n, 12n]]);
      // B's prefixes of its two longer runs (24 events), 8 events a call at first.
      expect(remotePrefixCalls).toBeGreaterThan(2);
      // Asked a page at a time, each page's behind check stops when its time is up: the runs it left
      // undecided are decided by the pages after it, which walk no further.
      const paged = { behind: [] as unknown[], diverging: [] as unknown[], decidingOnly: 0 };
      let token: Uint8Array = new Uint8Array(0);
      let calls = 0;
      do {
        const page = await verifier.verify(create(VerifyReplicationRequestSchema, { namespace: PREFIXED, cluster: "clusterB", pageSize: 1000, nextPageToken: token }));
        paged.behind.push(...page.behind.map(counts));
        paged.diverging.push(...page.diverging.map(counts));
        if (page.localExecutions + page.remoteExecutions === 0n && page.behind.length + page.diverging.length > 0) paged.decidingOnly++;
        token = page.nextPageToken;
      } while (token.length && ++calls < 100);
      expect([paged.behind.sort(), paged.diverging.sort()]).toEqual([res.behind.map(counts).sort(), res.diverging.map(counts).sort()]);
      expect(paged.decidingOnly).toBeGreaterThan(0);
    });
  });
}

// PostgreSQL only: the limit is PostgreSQL's, and a gigabyte through PGlite's WebAssembly heap
// proves nothing more. About 3 minutes and a gigabyte written: TERN_TEST_LARGE=1 runs it.
for (const store of (await testStores()).filter((s) => s === "postgres" && testEnv.largeTests)) {
  describe(`verify on ${store}: a run of more than 1 GB of events`, () => {
    let x: TestCluster;
    let namespaceId: string;
    let bigRunId: string;
    let smallRunId: string;

    beforeAll(async () => {
      x = await startTestCluster({ store, extraYaml: `limits: { blobSizeLimitError: ${SIGNAL_BYTES + MiB}, blobSizeLimitWarn: ${SIGNAL_BYTES + MiB} }` });
      const wf = x.client(WorkflowService);
      await wf.registerNamespace({ namespace: NS });
      namespaceId = (await wf.describeNamespace({ namespace: NS })).namespace!.namespaceInfo!.id;
      smallRunId = (await wf.startWorkflowExecution({ namespace: NS, workflowId: "small", ...T })).runId;
      for (let i = 0; i < 3; i++) await wf.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "small" }, signalName: `s${i}`, input: json({ i, text: "ünïcode ✓" }) });
      bigRunId = (await wf.startWorkflowExecution({ namespace: NS, workflowId: "big", ...T })).runId;
      const input = json("x".repeat(SIGNAL_BYTES - 16));
      // Binary, not JSON: 60 MiB a request rather than 80 MiB of base64 to encode and decode.
      const binary = createClient(WorkflowService, createConnectTransport({ baseUrl: x.url, useBinaryFormat: true }));
      for (let i = 0; i < SIGNALS; i++) await binary.signalWorkflowExecution({ namespace: NS, workflowExecution: { workflowId: "big" }, signalName: `part-${i}`, input });
    });
    afterAll(async () => {
      await x?.destroy();
    });

    test("TestChecksumsOfARunPastOneGigabyte: every run gets its checksum, the large one's computed in pages", async () => {
      // Every page: one that runs out of time in the large run answers with the runs before it and a token to go on with.
      const all: ExecutionChecksum[] = [];
      let token: Uint8Array = new Uint8Array(0);
      do {
        const res = await x.client(AdminService).getExecutionChecksums({ namespace: NS, nextPageToken: token });
        all.push(...res.executions);
        token = res.nextPageToken;
      } while (token.length);
      const byWorkflow = new Map(all.map((e) => [e.workflowId, e]));
      expect(all).toHaveLength(2);
      expect(byWorkflow.get("big")).toMatchObject({ runId: bigRunId, eventCount: BigInt(SIGNALS + 1) });
      expect(byWorkflow.get("big")!.checksum).toMatch(/^[0-9a-f]{32}$/);
      expect(byWorkflow.get("small")).toMatchObject({ runId: smallRunId, eventCount: 4n });
    });

    test("TestPagedDigestEqualsTheSqlOne: a peer that digests in SQL agrees, for whole runs and prefixes", async () => {
      const deps = { db: x.server.database.db, cluster: x.server.cluster, clients: createRemoteClientPool() };
      const inSql = createReplicationVerifier(deps);
      const inPages = createReplicationVerifier({ ...deps, sqlDigestBytes: 0 });
      const small = { namespace: NS, pageSize: 0, nextPageToken: new Uint8Array(0), prefixes: [{ workflowId: "small", runId: smallRunId, eventCount: 4n }] };
      const prefixes = { ...small, prefixes: [...small.prefixes, { workflowId: "big", runId: bigRunId, eventCount: 1n }] };
      const [a, b] = await Promise.all([inSql.checksums(prefixes), inPages.checksums(prefixes)]);
      const rows = (r: typeof a) => r.executions.map((e) => `${e.workflowId}/${e.eventCount}/${e.checksum}`).sort();
      expect(rows(b)).toEqual(rows(a));
      expect(rows(a)).toHaveLength(2);
    });
  });
}
