import { describe, expect, test } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { notServed } from "../../replication/not-served";

describe("whether a source's answer says it does not serve a call (a tern before it)", () => {
  const cases: [string, ConnectError, boolean][] = [
    ["Connect's unimplemented (this build and later)", new ConnectError("procedure x is not served", Code.Unimplemented), true],
    ["a stream's HTTP 404", new ConnectError("HTTP 404", Code.Unimplemented), true],
    ["an older tern's 404 for an unknown path", new ConnectError("no route for POST /tern.admin.v1.AdminService/PullReplicationTasks", Code.NotFound), true],
    ["a namespace not found", new ConnectError("namespace orders not found", Code.NotFound), false],
    ["unavailable", new ConnectError("no route for POST /x", Code.Unavailable), false],
  ];
  for (const [name, error, expected] of cases) test(`${name}: ${expected}`, () => expect(notServed(error)).toBe(expected));
});
