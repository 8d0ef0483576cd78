import { z } from "zod";
import { invalidArgument } from "../errors";

/** The token of a list ordered by name (namespaces, clusters): the last name it gave. */
export const NAME_TOKEN = z.object({ name: z.string() });

/** Opaque page tokens: JSON inside bytes. */
export function encodeToken(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/**
 * Decodes a token made by encodeToken, checked against the shape its encoder wrote; garbage,
 * or JSON of another shape, is INVALID_ARGUMENT. A field missing from a client's token would
 * otherwise reach a query as an undefined parameter, which postgres.js refuses only after the
 * query joined a connection's queue (see paramsRefusal): an INTERNAL error on an idle
 * connection; on a busy one, the query ahead of it fails in its place and it never settles.
 */
export function decodeToken<T>(token: Uint8Array, shape: z.ZodType<T>): T {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(token));
  } catch {
    throw invalidArgument("next_page_token is not valid");
  }
  const parsed = shape.safeParse(value);
  if (!parsed.success) throw invalidArgument("next_page_token is not valid");
  return parsed.data;
}
