import { type ConnectRouter, createRouterTransport, type ServiceImpl } from "@connectrpc/connect";
import type { AdminDbBackend } from "../../src/cli/admin-db-backend";
import { createCli } from "../../src/cli/cli";
import type { ReadInput } from "../../src/cli/json-source";
import { AdminService } from "../../src/gen/tern/admin/v1/service_pb";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { WorkflowService } from "../../src/gen/tern/workflow/v1/service_pb";

/** Fakes for the services; only the methods a test calls need to exist. */
export interface Fakes {
  workflow?: Partial<ServiceImpl<typeof WorkflowService>>;
  operator?: Partial<ServiceImpl<typeof OperatorService>>;
  admin?: Partial<ServiceImpl<typeof AdminService>>;
  interactive?: boolean;
  answer?: string;
  adminDb?: AdminDbBackend;
  /** What every call fails with, as a transport whose connection failed (connect-web's wrapper of a failed fetch). */
  callsFail?: unknown;
  /** What `-` (standard input) and `@PATH` read, by "-" or path; others fail as a missing file does. */
  inputs?: Record<string, string>;
  /** Reads input this way instead (a read that never ends). */
  readInput?: ReadInput;
  /** Ctrl-C. */
  signal?: AbortSignal;
  /** Sees each chunk the CLI writes to stdout, as it writes it. */
  onStdout?: (text: string) => void;
}

/** What one CLI run produced. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Base URLs the CLI asked a transport for. */
  addresses: string[];
}

/** Runs the CLI in process against fake services over a router transport. */
export async function runCli(argv: string[], fakes: Fakes = {}): Promise<RunResult> {
  let stdout = "";
  let stderr = "";
  const addresses: string[] = [];
  const cli = createCli({
    createTransport: (baseUrl) => {
      addresses.push(baseUrl);
      if (fakes.callsFail !== undefined) {
        const fail = () => Promise.reject(fakes.callsFail);
        return { unary: fail, stream: fail };
      }
      return createRouterTransport((router: ConnectRouter) => {
        router.service(WorkflowService, fakes.workflow ?? {});
        router.service(OperatorService, fakes.operator ?? {});
        router.service(AdminService, fakes.admin ?? {});
      });
    },
    stdout: (t) => {
      stdout += t;
      fakes.onStdout?.(t);
    },
    stderr: (t) => void (stderr += t),
    interactive: fakes.interactive ?? false,
    prompt: async () => fakes.answer ?? "",
    signal: fakes.signal,
    readInput: fakes.readInput ?? (async (source) => {
      const key = source === "-" ? "-" : source.path;
      const text = fakes.inputs?.[key];
      if (text === undefined) throw new Error(`ENOENT: no such file or directory, open '${key}'`);
      return text;
    }),
    loadAdminDb: fakes.adminDb ? async () => fakes.adminDb! : undefined,
  });
  const code = await cli.run(argv);
  return { code, stdout, stderr, addresses };
}
