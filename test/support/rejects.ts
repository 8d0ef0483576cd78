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

/**
 * p, its rejection marked handled at once, for a test that awaits p (or gives it to rejects) only
 * after other awaits: Bun fails the test on a rejection no handler saw by then, at once, while its
 * body runs on into the next test's. The later await still sees the rejection.
 */
export function awaitedLater<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}
