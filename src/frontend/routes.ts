import type { ConnectRouter, ServiceImpl } from "@connectrpc/connect";
import { Health } from "../gen/grpc/health/v1/health_pb";
import { BackfillService } from "../gen/tern/admin/v1/backfill_pb";
import { AdminService } from "../gen/tern/admin/v1/service_pb";
import { OperatorService } from "../gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../gen/tern/workflow/v1/service_pb";

/** The service implementations the frontend serves. */
export interface Services {
  workflow: ServiceImpl<typeof WorkflowService>;
  operator: ServiceImpl<typeof OperatorService>;
  admin: ServiceImpl<typeof AdminService>;
  backfill: ServiceImpl<typeof BackfillService>;
  health: ServiceImpl<typeof Health>;
}

/** The full names of the services createRoutes registers (Health answers for each). */
export const SERVED_SERVICES: readonly string[] = [WorkflowService, OperatorService, AdminService, BackfillService, Health].map((s) => s.typeName);

/** Registers every service on a router (used by the HTTP/1.1 app and the gRPC server alike). */
export function createRoutes(services: Services): (router: ConnectRouter) => void {
  return (router) => {
    router.service(WorkflowService, services.workflow);
    router.service(OperatorService, services.operator);
    router.service(AdminService, services.admin);
    router.service(BackfillService, services.backfill);
    router.service(Health, services.health);
  };
}
