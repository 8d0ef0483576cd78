import { invalidArgument } from "../errors";

/** Opaque page tokens: JSON inside bytes. */
export function encodeToken(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/** Decodes a token made by encodeToken; garbage is INVALID_ARGUMENT. */
export function decodeToken<T>(token: Uint8Array): T {
  try {
    const value = JSON.parse(new TextDecoder().decode(token));
    if (value && typeof value === "object") return value as T;
  } catch {}
  throw invalidArgument("next_page_token is not valid");
}
