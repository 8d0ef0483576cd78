import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { createDlqMerge } from "../replication/dlq-merge";
import { createReplicationVerifier } from "../replication/verification";
import { createForcedFailoverCheck } from "../replication/forced-failover-check";
import { AdminService } from "./gen/tern/admin/v1/service_pb";
import { createAdminHandler } from "./frontend/admin-handler";
import { createBackfillHandler } from "./frontend/backfill-handler";
import { createHealthHandler } from "./frontend/health-handler";
import { createForwardingWorkflowService } from "./frontend/forwarding";
import { createOperatorHandler } from "./frontend/operator-handler";
import { createRoutes, SERVED_SERVICES } from "./frontend/routes";
import { createWorkflowHandler } from "./frontend/workflow-handler";
import type { Base, Core } from "./server-core";
import type { Replication } from "./server-replication";
import type { ServerOptions } from "./server";
import { VERSION } from "./version";
import { loggableError } from "./errors";

/** The RPC services, behind forwarding where the policy asks for it. */
export function wireRoutes({ config, opts, log, now, cluster }: Base, core: Core, repl: Replication, health: { isServing: () => Promise<boolean>; stopped: AbortSignal }) {
  const { db, clusters, namespaces, notifier, engine, queries } = core;
  const { clients, dlq, applier, manager, redirections } = repl;
  return createRoutes({
    workflow: createForwardingWorkflowService({
      inner: createWorkflowHandler({ namespaces, engine, queries, checkForcedFailover: createForcedFailoverCheck({ db, namespaces, clusters, clients }) }),
      policy: config.dcRedirectionPolicy.policy, namespaces, clusters, clients, redirections, timeoutMs: opts.forwardTimeoutMs,
    }),
    operator: createOperatorHandler({
      db, clusters, namespaces, remotes: repl.remotes, version: VERSION, clients, redirections,
      connectionState: (name) => manager.connectionState(name),
      failover: repl.failover, forwardTimeoutMs: opts.forwardTimeoutMs, switchHeardWaitMs: opts.switchHeardWaitMs, whenChanged: core.whenChanged,
      refreshDlqGauge: repl.readDlqGauge,
      onNamespaceDeleted: () => void repl.namespaceReceiver.retryHeld().catch((e) => log.warn("applying held namespace replication tasks failed; retried at the next poll", { error: loggableError(e) })),
    }),
    admin: withPullHooks(
      createAdminHandler({
        db, cluster, sender: repl.sender, status: repl.status, dlq,
        namespaceSender: repl.namespaceSender,
        dlqMerge: createDlqMerge({ db, dlq, applier, writer: core.writer, clients, notifier, log, rounds: opts.replication?.dlqMergeRounds, chases: opts.replication?.dlqMergeChases }),
        verifier: createReplicationVerifier({ db, cluster, clients, ...opts.replication?.verify }),
      }),
      opts.replication,
    ),
    backfill: createBackfillHandler({ db, namespaces, clusters, now, wake: repl.backfill.wake }),
    health: createHealthHandler(health.isServing, SERVED_SERVICES, health.stopped),
  });
}

/**
 * admin with the pull test hooks: PullReplicationTasks answers as a tern before it does
 * (not_found "no route for ...") while servePull says false, and as a tern before cursor columns while
 * serveCursorColumns says false; StreamReplicationTasks answers Unimplemented while
 * serveStream says false, and always with either of the others set, and each of its messages
 * waits for beforeStreamMessage; GetReplicationTasks waits for beforeShardPage, and
 * PullReplicationTasks for beforePull.
 */
function withPullHooks(
  admin: ServiceImpl<typeof AdminService>,
  hooks: Pick<NonNullable<ServerOptions["replication"]>, "servePull" | "serveCursorColumns" | "serveStream" | "beforeStreamMessage" | "beforeShardPage" | "beforePull"> = {},
): ServiceImpl<typeof AdminService> {
  const { servePull, serveCursorColumns, serveStream, beforeStreamMessage, beforeShardPage, beforePull } = hooks;
  return {
    ...admin,
    ...((servePull || serveCursorColumns || serveStream || beforeStreamMessage) && {
      async *streamReplicationTasks(r, ctx) {
        if (servePull || serveCursorColumns || (serveStream && !serveStream())) throw new ConnectError("StreamReplicationTasks is not served here", Code.Unimplemented);
        for await (const message of admin.streamReplicationTasks(r, ctx)) {
          await beforeStreamMessage?.(ctx.signal);
          yield message;
        }
      },
    }),
    ...((servePull || serveCursorColumns || beforePull) && {
      async pullReplicationTasks(r, ctx) {
        // What a Connect client reads from a tern before the call: its 404 for an unknown path.
        if (servePull && !servePull()) throw new ConnectError(`no route for POST /${AdminService.typeName}/PullReplicationTasks`, Code.NotFound);
        await beforePull?.(r, ctx.signal);
        if (!serveCursorColumns || serveCursorColumns(r.cursorColumns !== undefined)) return admin.pullReplicationTasks(r, ctx);
        const res = await admin.pullReplicationTasks({ ...r, cursorColumns: undefined }, ctx);
        return { ...res, readsCursorColumns: false };
      },
    }),
    ...(beforeShardPage && {
      async getReplicationTasks(r, ctx) {
        await beforeShardPage(r.shardId, ctx.signal);
        return admin.getReplicationTasks(r, ctx);
      },
    }),
  };
}
