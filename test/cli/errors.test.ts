import { describe, expect, test } from "bun:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { OperatorService } from "../../src/gen/tern/operator/v1/service_pb";
import { CliError, formatError, isAbort, UsageError, usageHint } from "../../src/cli/errors";

const address = "http://127.0.0.1:7233";

function fetchFailure(code: string): ConnectError {
  const cause = Object.assign(new TypeError(`${code}: Unable to connect`), { code });
  return new ConnectError(cause.message, Code.Unknown, undefined, undefined, cause);
}

describe("formatError", () => {
  test("ConnectError: code in snake_case and the raw message", () => {
    const err = new ConnectError("namespace orders not found", Code.NotFound);
    expect(formatError(err, address)).toBe("error: not_found: namespace orders not found");
    expect(formatError(new ConnectError("x", Code.FailedPrecondition), address)).toBe("error: failed_precondition: x");
  });

  test("only the first line of a multi-line message", () => {
    expect(formatError(new ConnectError("a\nstack", Code.Internal), address)).toBe("error: internal: a");
  });

  test("connection refused names the address", () => {
    expect(formatError(fetchFailure("ECONNREFUSED"), address)).toBe(
      "error: cannot reach tern at http://127.0.0.1:7233 (connection refused)",
    );
    expect(formatError(fetchFailure("ConnectionRefused"), address)).toContain("(connection refused)");
    expect(formatError(fetchFailure("ENOTFOUND"), "http://x:1")).toBe("error: cannot reach tern at http://x:1 (host not found)");
  });

  test("an address with a password (a proxy's) is named without it", () => {
    expect(formatError(fetchFailure("ECONNREFUSED"), "http://ops:s3cret@127.0.0.1:7233")).toBe("error: cannot reach tern at http://ops:***@127.0.0.1:7233 (connection refused)");
  });

  test("a server-sent Unknown error is not mistaken for a network failure", () => {
    expect(formatError(new ConnectError("boom", Code.Unknown), address)).toBe("error: unknown: boom");
  });

  test("plain errors, usage errors and a locked PGlite data dir", () => {
    expect(formatError(new UsageError("--type is required"), address)).toBe("error: --type is required");
    expect(formatError(new CliError("nope"), address)).toBe("error: nope");
    const locked = Object.assign(new Error("data dir ./data is in use by process 42"), { name: "DataDirLockedError" });
    expect(formatError(locked, address)).toBe(
      "error: data dir ./data is in use by process 42; stop the tern server using it first",
    );
  });

  test("usageHint and isAbort", () => {
    expect(usageHint(["workflow", "start"])).toBe("(run 'tern workflow start --help' for usage)");
    expect(isAbort(new ConnectError("x", Code.Canceled))).toBe(true);
    expect(isAbort(new DOMException("aborted", "AbortError"))).toBe(true);
    expect(isAbort(new Error("x"))).toBe(false);
  });

  test("an HTTP server that is not tern (a web page, a JSON API, a redirect) is named as not tern's Connect port, and an https:// address for a plain-HTTP port as such, not 'unknown: unsupported content type text/html' or Bun's 'UnexpectedRedirect ... pass `verbose: true`'", async () => {
    const answers: Record<string, () => Response> = {
      "/page": () => new Response("<html></html>", { headers: { "content-type": "text/html" } }),
      "/api": () => new Response("{}", { headers: { "content-type": "application/json" } }),
      "/moved": () => new Response(null, { status: 302, headers: { location: "https://elsewhere.example/" } }),
    };
    const web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: (req) => answers[`/${new URL(req.url).pathname.split("/")[1]}`]!() });
    try {
      const said = async (path: string, scheme = "http") => {
        const baseUrl = `${scheme}://127.0.0.1:${web.port}${path}`;
        const client = createClient(OperatorService, createConnectTransport({ baseUrl, useBinaryFormat: true }));
        const err = await client.listClusters({}).then(() => undefined, (e: unknown) => e);
        return formatError(err, baseUrl).replace(`${scheme}://127.0.0.1:${web.port}`, "ADDR");
      };
      const hint = "; --address takes services.frontend.rpc.port, not the gRPC port";
      expect(await said("/page")).toBe(`error: ADDR/page is not tern's Connect port (it answered text/html, not Connect's application/proto)${hint}`);
      expect(await said("/api")).toBe(`error: ADDR/api is not tern's Connect port (it answered application/json, not Connect's application/proto)${hint}`);
      expect(await said("/moved")).toBe(`error: ADDR/moved is not tern's Connect port (it answered with a redirect)${hint}`);
      // An https:// address for a port that speaks plain HTTP, as tern's own does: it said Bun's 'unknown: EPROTO: The TLS handshake failed. ...'.
      expect(await said("/page", "https")).toBe("error: cannot reach tern at ADDR/page (its TLS handshake failed: does the server there speak TLS? tern itself serves http://)");
    } finally {
      await web.stop(true);
    }
  });
});
