import type { Interceptor } from "@connectrpc/connect";
import { WorkflowService } from "../gen/tern/workflow/v1/service_pb";
import type { TurnTaking } from "../turn-taking";

/**
 * Tells turns of the workflow calls in flight (clients' reads and writes), which background
 * work (the timer queue's drain) lets go first. Not a long poll's wait for new events, nor
 * streams: they would hold the work back for their whole wait.
 */
export function createClientTurnsInterceptor(turns: TurnTaking): Interceptor {
  return (next) => async (req) => {
    if (req.stream || req.service.typeName !== WorkflowService.typeName || (req.message as { waitNewEvent?: boolean }).waitNewEvent) return next(req);
    const ended = turns.began();
    try {
      return await next(req);
    } finally {
      ended();
    }
  };
}
