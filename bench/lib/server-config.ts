import { stringify } from "yaml";
import { parseConfig } from "../../src/config/load";
import type { DatastoreConfig } from "../../src/config/schema";

/** What varies between the bench's servers. */
export interface BenchServerConfig {
  datastore: DatastoreConfig;
  port: number;
  grpcPort: number;
  numHistoryShards?: number;
}

/**
 * The YAML of a single-cluster server with rate limits off (rps 0) and quiet logs,
 * checked with the server's own parser so a schema change fails here, not in the child.
 */
export function benchServerYaml({ datastore, port, grpcPort, numHistoryShards = 16 }: BenchServerConfig): string {
  const yaml = stringify({
    clusterMetadata: {
      enableGlobalNamespace: false,
      failoverVersionIncrement: 10,
      masterClusterName: "active",
      currentClusterName: "active",
      clusterInformation: { active: { enabled: true, initialFailoverVersion: 0, rpcAddress: "" } },
    },
    persistence: { numHistoryShards, datastore },
    services: { frontend: { rpc: { bindOnIP: "127.0.0.1", port, grpcPort } } },
    limits: { hostRps: { rps: 0, burst: 1 }, namespaceRps: { rps: 0, burst: 1 } },
    log: { level: "warn" },
  });
  parseConfig(yaml, {}, "bench server config");
  return yaml;
}
