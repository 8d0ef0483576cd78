/**
 * For a namespace's changes held here behind a copy of its name with another id (namespace-held.ts): the way out
 * when that copy is live, not stale. A forced failover here of a copy whose namespace was deleted on its
 * active cluster, before this cluster heard of the one registered again there, is a legitimate order;
 * the two are then different namespaces of one name, each held behind the other where it is not active.
 */
export function liveCopyWayOut(here: string, source: string, name: string, id: string, localId: string): string {
  return `If ${localId} is live here instead (active here, failed over before ${here} heard of ${id}), these are two namespaces of one name: ` +
    `to keep ${localId}, take ${here} out of ${id}'s clusters on ${source} (the held tasks are then dropped), then delete ${id} there; ` +
    `to keep ${id}, take ${source} out of ${localId}'s clusters here, then delete ${localId} here ('tern operator namespace delete ${name}': what it took is lost), ` +
    `and the held tasks apply`;
}
