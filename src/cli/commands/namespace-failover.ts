import { FailoverNamespaceResponseSchema } from "../../gen/tern/operator/v1/service_pb";
import { getString, requireString } from "../args";
import type { CommandContext, LeafCommand } from "../command";
import { FAILOVER_WAIT_MS, millisOf } from "../deadline";
import { CliError, lostMidCall } from "../errors";
import { parseDuration } from "../duration";
import { failedOverLine, namespaceSummary } from "../format-namespace";
import { messageJson } from "../output";
import { namespaceArg, namespaceFlag } from "./common-flags";

/** `tern operator namespace failover`: the graceful failover (HANDOVER, drain, switch). */
export const failoverCommand: LeafCommand = {
  kind: "leaf",
  name: "failover",
  summary: "Fail a global namespace over to another cluster gracefully",
  details: [
    "The active cluster puts the namespace in HANDOVER (new writes wait), waits until the",
    "target cluster has applied every replication task of the namespace, then makes the",
    "target active with a higher failover version. If the target does not catch up within",
    "--timeout, the namespace goes back to NORMAL on the current cluster and nothing changes.",
    "For a forced failover (the active cluster is down), use",
    "'tern operator namespace update -n NS --active-cluster NAME' on the target cluster.",
    "The answer waits for the target to confirm the switch; one it refused (a failover made",
    "elsewhere reached it first) is an error saying where the namespace is active now, and one it",
    "has not confirmed in time is printed with a NOTE saying so.",
    'With -o json, prints the FailoverNamespaceResponse { "namespace", "handoverTaskIds", "unconfirmed" }.',
  ].join("\n"),
  positionals: "[NAMESPACE]",
  maxPositionals: 1,
  flags: [
    namespaceFlag,
    { name: "to", kind: "string", valueName: "CLUSTER", description: "Cluster to make active (required)" },
    { name: "timeout", kind: "string", valueName: "DURATION", description: "How long to wait for the target to catch up", defaultText: "10s" },
  ],
  async run(ctx, args) {
    const namespace = namespaceArg(args);
    const targetCluster = requireString(args, "to");
    const timeoutText = getString(args, "timeout");
    const timeout = timeoutText === undefined ? undefined : parseDuration(timeoutText, "timeout");
    // The call waits for the catch-up on purpose; its deadline comes on top of that wait.
    const timeoutMs = ctx.deadlineMs(timeout ? millisOf(timeout) : FAILOVER_WAIT_MS);
    const res = await ctx.operator().failoverNamespace({ namespace, targetCluster, timeout }, { signal: ctx.signal, timeoutMs }).catch((e: unknown) => {
      throw cutShort(e, ctx.address, namespace, targetCluster);
    });
    if (ctx.format === "json") return ctx.out(messageJson(FailoverNamespaceResponseSchema, res));
    const ns = res.namespace;
    const active = ns?.replicationConfig?.activeClusterName ?? targetCluster;
    ctx.out(`${failedOverLine(namespace, ns, "graceful")}: ${namespaceSummary(ns)}\n`);
    ctx.err(res.unconfirmed ? unconfirmedNote(namespace, active, res.unconfirmed) : await staleViewNote(ctx, namespace, active));
  },
};

/**
 * A NOTE when the server switched but its target did not confirm the switch in time
 * (FailoverNamespaceResponse.unconfirmed, why): the target may still take it, or refuse it if a
 * failover made elsewhere reached it first. The view NOTE is left out: the target's view is the
 * one that counts then.
 */
function unconfirmedNote(namespace: string, target: string, why: string): string {
  return `NOTE: switched on the cluster that was active, but not yet confirmed by ${target} (${why}): ${target} may still take the switch, ` +
    `or refuse it if a failover made elsewhere reached it first; 'tern operator namespace describe ${namespace}' on ${target} says where ${namespace} is active.\n`;
}

/**
 * A NOTE when the cluster asked still sees another cluster active: a third cluster (neither the
 * old active nor the target) answers as the active one does, before it hears of the switch
 * itself; until it hears, writes sent to it follow its old view. Best effort: nothing when the
 * describe fails.
 */
async function staleViewNote(ctx: CommandContext, namespace: string, active: string): Promise<string> {
  const res = await ctx.workflow().describeNamespace({ namespace }, { signal: ctx.signal }).catch(() => undefined);
  const seen = res?.namespace?.replicationConfig?.activeClusterName;
  if (!seen || seen === active) return "";
  return `NOTE: the cluster at ${ctx.address} still sees ${namespace} active in ${seen}: it has not heard of the switch yet (namespace replication brings it; if this lasts, check its link to ${seen}), and writes sent to it follow that view until it hears.\n`;
}

/**
 * A failover whose connection was cut once the server had it (the server killed or restarted
 * while it ran) may have switched or not: "cannot reach tern" alone read as nothing done. Says
 * so, and where to look. Any other failure is left as it is.
 */
function cutShort(e: unknown, address: string, namespace: string, target: string): unknown {
  const reason = lostMidCall(e);
  if (!reason) return e;
  return new CliError(
    `the connection to tern at ${address} was lost during the failover (${reason}): whether ${namespace} switched to ${target} is unknown; ` +
      `'tern operator namespace describe ${namespace}' on a running cluster of the namespace says where it is active ` +
      "(a HANDOVER left by a server that stopped is put back to NORMAL when it starts again)",
  );
}
