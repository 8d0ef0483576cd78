import type { Config } from "./schema";
import { pastBound } from "./bounds";

/** Cross-field rules of clusterMetadata (DESIGN.md section 1); returns the first broken rule. */
export function checkClusterRules(config: Config): string | undefined {
  const meta = config.clusterMetadata;
  const inc = meta.failoverVersionIncrement;
  const info = meta.clusterInformation;
  if (!info[meta.currentClusterName]) {
    return `clusterMetadata.currentClusterName ${meta.currentClusterName} must be a key of clusterMetadata.clusterInformation`;
  }
  // Read for no cluster: the current one serves whatever it says, peers are connected at run time.
  if (!info[meta.currentClusterName]!.enabled) {
    return `clusterMetadata.clusterInformation.${meta.currentClusterName}.enabled is false, but ${meta.currentClusterName} is this cluster (currentClusterName), which cannot be disabled; to stop replicating with a peer, tern admin cluster upsert-remote-cluster --frontend_address HOST:PORT --enable_connection false`;
  }
  const seen = new Map<number, string>();
  for (const [name, cluster] of Object.entries(info)) {
    const key = `clusterMetadata.clusterInformation.${name}.initialFailoverVersion`;
    if (cluster.initialFailoverVersion === 0 && meta.enableGlobalNamespace) {
      return `${key} must be > 0 when clusterMetadata.enableGlobalNamespace is true`;
    }
    if (cluster.initialFailoverVersion >= inc) {
      return `${key}: ${pastBound(cluster.initialFailoverVersion, { bound: `${inc} (failoverVersionIncrement)`, upper: true, inclusive: false })}`;
    }
    const other = seen.get(cluster.initialFailoverVersion);
    if (other) return `${key} must differ from ${other}'s (${cluster.initialFailoverVersion})`;
    seen.set(cluster.initialFailoverVersion, name);
  }
  const limits = config.limits;
  return atMost("limits.blobSizeLimitWarn", limits.blobSizeLimitWarn, "limits.blobSizeLimitError", limits.blobSizeLimitError)
    ?? atMost("limits.historyCountLimitWarn", limits.historyCountLimitWarn, "limits.historyCountLimitError", limits.historyCountLimitError);
}

/** key's value past the most the other key allows. */
function atMost(key: string, value: number, mostKey: string, most: number): string | undefined {
  return value > most ? `${key}: ${pastBound(value, { bound: `${most} (${mostKey})`, upper: true, inclusive: true })}` : undefined;
}
