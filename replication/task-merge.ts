import type { IncomingTask } from "./apply-errors";
import { versionAt } from "./version-history";

/**
 * Merges adjacent tasks of one run into one task when that changes nothing the applier
 * decides: each carries all its events, each starts where the one before ended, and every
 * earlier event lies on the later task's branch (same version at its id). The applier then
 * locks, reads and writes a run once per page rather than once per task: a catch-up page
 * holds dozens of tasks of each run. Anything else stays as it came, in order.
 */
export function mergeRunTasks(tasks: IncomingTask[]): IncomingTask[] {
  const out: IncomingTask[] = [];
  for (const t of tasks) {
    const prev = out.at(-1);
    if (prev && mergeable(prev, t)) out[out.length - 1] = { ...t, firstEventId: prev.firstEventId, events: [...prev.events, ...t.events] };
    else out.push(t);
  }
  return out;
}

function mergeable(a: IncomingTask, b: IncomingTask): boolean {
  return (
    a.namespaceId === b.namespaceId &&
    a.workflowId === b.workflowId &&
    a.runId === b.runId &&
    complete(a) &&
    complete(b) &&
    b.firstEventId === a.nextEventId &&
    a.events.every((e) => versionAt(b.versionHistory, Number(e.eventId)) === Number(e.version))
  );
}

/** The task holds exactly its events first..next-1, in order. */
function complete(t: IncomingTask): boolean {
  return t.events.length === t.nextEventId - t.firstEventId && t.events.every((e, i) => Number(e.eventId) === t.firstEventId + i);
}
