import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { EventType, HistoryEventSchema } from "../../src/gen/tern/common/v1/common_pb";
import { insertBranchEvents, readBranchEvents } from "../../src/history/branch-store";
import { historyBranches } from "../../src/persistence/schema";
import { useTestDatabase } from "../support/server";
import { testStores } from "../support/stores";

setDefaultTimeout(60_000);

const signal = (eventId: number) =>
  create(HistoryEventSchema, {
    eventId: BigInt(eventId),
    version: 1n,
    eventType: EventType.WORKFLOW_EXECUTION_SIGNALED,
    eventTime: timestampFromDate(new Date(Date.UTC(2026, 0, 1))),
    attributes: { case: "workflowExecutionSignaledEventAttributes", value: { signalName: "s", identity: "i", requestId: `r-${eventId}` } },
  });

for (const store of await testStores()) {
  describe(`branch store on ${store}`, () => {
    const opened = useTestDatabase(store);

    // A branch that lost a conflict keeps every event after the fork, and a history may hold
    // 51,200 (limits.historyCountLimitError): 8,000 events of 9 columns were one insert of
    // 72,000 parameters, more than a statement takes, and the conflict could not be settled.
    test("TestABranchOfMoreEventsThanOneStatementTakesIsKeptWhole", async () => {
      const key = { namespaceId: "ns", workflowId: "wf", runId: "run" };
      const events = Array.from({ length: 8_000 }, (_, i) => signal(i + 2));
      await opened.database.db.transaction((tx) =>
        Promise.all([
          tx.insert(historyBranches).values({ ...key, branchId: 1, forkEventId: 1, versionHistory: [{ eventId: 8_001, version: 1 }] }),
          insertBranchEvents(tx, key, 1, events),
        ]),
      );
      const kept = await readBranchEvents(opened.database.db, key, 1, 2, 8_002);
      expect(kept.map((e) => Number(e.eventId))).toEqual(events.map((e) => Number(e.eventId)));
      expect(kept.at(-1)).toEqual(events.at(-1)!);
    });
  });
}
