import type { VersionHistoryItem } from "../src/persistence/schema";

/** The last event id a version history covers (0 when empty). */
export const lastEventIdOf = (history: VersionHistoryItem[]) => history.at(-1)?.eventId ?? 0;

/** The version of a history's last event (0 when empty). */
export const lastVersionOf = (history: VersionHistoryItem[]) => history.at(-1)?.version ?? 0;

/** The version event eventId was written at, or undefined past the history's end. */
export function versionAt(history: VersionHistoryItem[], eventId: number): number | undefined {
  if (eventId < 1) return undefined;
  return history.find((item) => item.eventId >= eventId)?.version;
}

/** The history of events up to eventId only: a page of a longer history, as a task of those events carries it. */
export function versionHistoryUpTo(history: VersionHistoryItem[], eventId: number): VersionHistoryItem[] {
  const upTo = history.filter((item) => item.eventId < eventId);
  const version = versionAt(history, eventId);
  return version === undefined ? upTo : [...upTo, { eventId, version }];
}

/**
 * The first event id, up to the shorter history's end, at which the two histories
 * disagree on the version (DESIGN.md section 4, divergence after a forced failover),
 * or undefined when one is a prefix of the other.
 */
export function firstDivergence(local: VersionHistoryItem[], incoming: VersionHistoryItem[]): number | undefined {
  const upTo = Math.min(lastEventIdOf(local), lastEventIdOf(incoming));
  let start = 1;
  // Both are step functions of the event id: comparing each step's ends compares every event.
  for (const item of local) {
    if (start > upTo) break;
    const end = Math.min(item.eventId, upTo);
    if (versionAt(incoming, start) !== item.version) return start;
    if (versionAt(incoming, end) !== item.version) return firstMismatch(incoming, item.version, start, end);
    start = item.eventId + 1;
  }
  return undefined;
}

function firstMismatch(history: VersionHistoryItem[], version: number, from: number, to: number): number {
  for (let id = from; id <= to; id++) if (versionAt(history, id) !== version) return id;
  return to;
}

/** Version history items from the protobuf form. */
export function versionHistoryFromProto(items: { eventId: bigint; version: bigint }[] | undefined): VersionHistoryItem[] {
  return (items ?? []).map((i) => ({ eventId: Number(i.eventId), version: Number(i.version) }));
}

/** A stored version history in its protobuf form. */
export function versionHistoryToProto(history: VersionHistoryItem[]): { items: { eventId: bigint; version: bigint }[] } {
  return { items: history.map((i) => ({ eventId: BigInt(i.eventId), version: BigInt(i.version) })) };
}
