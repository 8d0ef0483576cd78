/** Failover version arithmetic (DESIGN.md section 1): pure, no I/O. */

/** The version a namespace takes when it fails over to the cluster whose initial version is targetInitial. */
export function nextFailoverVersion(targetInitial: number, current: number, increment: number): number {
  let v = Math.floor(current / increment) * increment + targetInitial;
  if (v < current) v += increment;
  return v;
}

/** The initial failover version of the cluster that wrote at `version`. */
export function ownerInitialVersion(version: number, increment: number): number {
  return ((version % increment) + increment) % increment;
}

/** Name of the cluster that owns version, or undefined when no known cluster has that initial version. */
export function clusterForVersion(
  version: number,
  increment: number,
  initialVersions: ReadonlyMap<string, number>,
): string | undefined {
  const initial = ownerInitialVersion(version, increment);
  for (const [name, v] of initialVersions) if (v === initial) return name;
  return undefined;
}

/** True when both versions were written by the same cluster. */
export function isSameCluster(v1: number, v2: number, increment: number): boolean {
  return (v1 - v2) % increment === 0;
}
