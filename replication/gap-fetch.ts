import type { HistoryEvent } from "../src/gen/tern/common/v1/common_pb";
import { runKeyText } from "../src/history/branch-store";
import type { IncomingTask, RawHistoryFetcher } from "./apply-errors";
import { inTurns } from "../src/in-turns";
import { firstDivergence, lastEventIdOf } from "./version-history";

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
 * Whether e is fetchOutside's fetcher asking for a range it has not fetched yet: the apply
 * goes on with what does not depend on it (so one rollback finds every range), then fails with it.
 */
export const lacksRawHistory = (e: unknown): boolean => e instanceof NeedsRawHistory;

type Range = { task: IncomingTask; first: number; next: number };

/** Raw history calls a round makes at once: a page of a thousand runs with gaps does not open a thousand calls to the source. */
const FETCHES_AT_ONCE = 8;

/** Whether events [r.first, r.next) of r's branch are those of held's (the same run, versions agreeing through r.next - 1). */
function covers(held: Range, r: Range): boolean {
  if (runKeyText(held.task) !== runKeyText(r.task) || held.first > r.first || r.next > held.next) return false;
  const [a, b] = [held.task.versionHistory, r.task.versionHistory];
  const diverges = firstDivergence(a, b);
  return lastEventIdOf(a) >= r.next - 1 && lastEventIdOf(b) >= r.next - 1 && (diverges === undefined || diverges >= r.next);
}

/**
 * Runs apply (one database transaction) with a raw-history fetcher that never calls the source
 * inside it: a range not fetched yet throws, which rolls the transaction back; every range the
 * attempt asked for and lacked (an apply of a page goes on past one, lacksRawHistory) is then
 * fetched through fetchRaw, side by side, with no transaction open and no connection held (a
 * black-holed link holds a call up to its 30 s timeout), and apply runs again, reading the runs
 * afresh: a page with gaps in several runs takes one rollback, not one per gap. A range a run
 * no longer lacks (another apply added events meanwhile) is served from the fetched events, one
 * that changed is fetched in turn. Each round fetches a range not fetched before, so it ends
 * once the runs stop changing.
 */
export async function fetchOutside<T>(fetchRaw: RawHistoryFetcher, apply: (fetchRaw: RawHistoryFetcher) => Promise<T>): Promise<T> {
  const fetched: (Range & { events: HistoryEvent[] })[] = [];
  for (;;) {
    const lacking: Range[] = [];
    const prefetched: RawHistoryFetcher = async (task, first, next) => {
      const asked = { task, first, next };
      const held = fetched.find((f) => covers(f, asked));
      if (!held) throw (lacking.push(asked), new NeedsRawHistory(task, first, next));
      return held.events.slice(first - held.first, next - held.first);
    };
    try {
      return await apply(prefetched);
    } catch (e) {
      if (!(e instanceof NeedsRawHistory)) throw e;
      // A range another one covers (a later task of the run asked from the same event) is not fetched twice.
      const wanted = lacking.filter((r, i) => !lacking.some((o, j) => j !== i && covers(o, r) && (!covers(r, o) || j < i)));
      const events = await inTurns(wanted, FETCHES_AT_ONCE, (r) => fetchRaw(r.task, r.first, r.next));
      // Held as far as the events go (not as far as asked): a short answer is asked for again, not served short.
      wanted.forEach((r, i) => fetched.push({ ...r, next: r.first + events[i]!.length, events: events[i]! }));
    }
  }
}
