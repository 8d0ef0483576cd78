import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { runKeyText } from "../src/history/branch-store";
import type { IncomingTask, RawHistoryFetcher } from "./apply-errors";

/** Thrown by fetchOutside's fetcher inside the apply: rolls it back so the events are fetched outside the transaction. */
class NeedsRawHistory extends Error {
  constructor(
    readonly task: IncomingTask,
    readonly first: number,
    readonly next: number,
  ) {
    super(`events [${first}, ${next}) of ${task.workflowId} run ${task.runId} are fetched from the source outside the transaction`);
  }
}

/**
 * Runs apply (one database transaction) with a raw-history fetcher that never calls the source
 * inside it: a range not fetched yet throws, which rolls the transaction back; the range is then
 * fetched through fetchRaw, with no transaction open and no connection held (a black-holed link
 * holds the call up to its 30 s timeout), and apply runs again, reading the run afresh: a range
 * the run no longer lacks (another apply added events meanwhile) is served from the fetched
 * events, one that changed is fetched in turn. Each round fetches a range not fetched before,
 * so it ends once the runs stop changing.
 */
export async function fetchOutside<T>(fetchRaw: RawHistoryFetcher, apply: (fetchRaw: RawHistoryFetcher) => Promise<T>): Promise<T> {
  const fetched = new Map<string, { first: number; events: HistoryEvent[] }[]>();
  const branchOf = (task: IncomingTask) => `${runKeyText(task)}/${JSON.stringify(task.versionHistory)}`;
  const prefetched: RawHistoryFetcher = async (task, first, next) => {
    const held = fetched.get(branchOf(task))?.find((f) => f.first <= first && next <= f.first + f.events.length);
    if (!held) throw new NeedsRawHistory(task, first, next);
    return held.events.slice(first - held.first, next - held.first);
  };
  for (;;) {
    try {
      return await apply(prefetched);
    } catch (e) {
      if (!(e instanceof NeedsRawHistory)) throw e;
      const events = await fetchRaw(e.task, e.first, e.next);
      const branch = branchOf(e.task);
      fetched.set(branch, [...(fetched.get(branch) ?? []), { first: e.first, events }]);
    }
  }
}
