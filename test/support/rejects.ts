import { expect } from "bun:test";
import { Code, ConnectError } from "@connectrpc/connect";

/** Expects the call to fail with a Connect code and a message containing text. */
export async function rejects(p: Promise<unknown>, code: Code, text: string): Promise<ConnectError> {
  const e = await p.then(() => undefined, (err) => err);
  expect(e).toBeInstanceOf(ConnectError);
  expect(Code[(e as ConnectError).code]).toBe(Code[code]);
  expect((e as ConnectError).rawMessage).toContain(text);
  return e as ConnectError;
}
