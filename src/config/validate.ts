import type { Config } from "./schema";
import { pastBound } from "./bounds";
import { DEFAULT_RETRY_POLICY } from "../../replication/retry-policy";

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
    ?? atMost("limits.historyCountLimitWarn", limits.historyCountLimitWarn, "limits.historyCountLimitError", limits.historyCountLimitError)
    ?? checkRetry(config.replication.retry);
}

/** key's value past the most the other key allows (its value, or its default where left out). */
function atMost(key: string, value: number, mostKey: string, most: number, defaulted = false): string | undefined {
  return value > most ? `${key}: ${pastBound(value, { bound: `${most} (${mostKey}${defaulted ? ", by default" : ""})`, upper: true, inclusive: true })}` : undefined;
}

/**
 * A first backoff above its maximum waited the first backoff once and the maximum after it (the
 * doubling is capped there): refused, naming the default where the maximum is left out. A maximum
 * given alone below the default first backoff caps that too (retry-policy.ts), so it is taken.
 */
function checkRetry(retry: Config["replication"]["retry"]): string | undefined {
  if (retry?.backoffMs === undefined) return undefined;
  const defaulted = retry.maxBackoffMs === undefined;
  const key = "replication.retry.";
  return atMost(`${key}backoffMs`, retry.backoffMs, `${key}maxBackoffMs`, retry.maxBackoffMs ?? DEFAULT_RETRY_POLICY.maxBackoffMs, defaulted);
}
