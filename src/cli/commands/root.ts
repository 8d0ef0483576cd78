import type { GroupCommand } from "../command";
import { adminDbCommand } from "./admin-db";
import { adminClusterCommand, operatorClusterCommand } from "./operator-cluster";
import { operatorNamespaceCommand } from "./operator-namespace";
import { replicationCommand } from "./replication";
import { actionCommands } from "./workflow-actions";
import { queryCommands } from "./workflow-query";
import { showCommand } from "./workflow-show";
import { startCommands } from "./workflow-start";

/** `tern workflow ...`, named as in the Temporal CLI. */
export const workflowCommand: GroupCommand = {
  kind: "group",
  name: "workflow",
  summary: "Start, signal, inspect and close workflow executions",
  commands: [...startCommands, ...actionCommands, ...queryCommands, showCommand],
};

/** `tern operator ...`. */
export const operatorCommand: GroupCommand = {
  kind: "group",
  name: "operator",
  summary: "Manage clusters and namespaces",
  commands: [operatorClusterCommand, operatorNamespaceCommand],
};

/** `tern admin ...`. */
export const adminCommand: GroupCommand = {
  kind: "group",
  name: "admin",
  summary: "Administer the database behind a cluster; connect clusters (tctl spelling)",
  commands: [adminDbCommand, adminClusterCommand],
};

/** The whole command tree. */
export const rootCommand: GroupCommand = {
  kind: "group",
  name: "tern",
  summary: "tern: command-line client of the tern multi-cluster replication gateway",
  commands: [workflowCommand, operatorCommand, replicationCommand, adminCommand],
};
