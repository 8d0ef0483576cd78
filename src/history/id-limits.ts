import { invalidArgument } from "../errors";
import { MAX_ID_LENGTH } from "../namespace/validate";

/** Each [what, value] no longer than MAX_ID_LENGTH characters (UTF-16 units). */
export function checkIdLengths(...fields: [string, string | undefined][]): void {
  for (const [what, value] of fields) if (value && value.length > MAX_ID_LENGTH) throw invalidArgument(`${what} is longer than ${MAX_ID_LENGTH} characters`);
}

/**
 * Each [what, value] of a new key (a workflow id at its start, a request id) no longer than
 * MAX_ID_LENGTH bytes of UTF-8, as Temporal counts it: they are keys of PostgreSQL indexes,
 * whose rows hold at most 2,704 bytes, and 1,000 characters of CJK (3,000 bytes) failed the
 * insert as an internal error. Ids already stored are looked up by characters (checkIdLengths).
 * A value of at most a third of the limit in UTF-16 units cannot be over it: most are not counted.
 */
export function checkKeyBytes(...fields: [string, string | undefined][]): void {
  for (const [what, value] of fields) {
    if (!value || value.length <= MAX_ID_LENGTH / 3) continue;
    const bytes = textBytes(value);
    if (bytes > MAX_ID_LENGTH) throw invalidArgument(`${what} is longer than ${MAX_ID_LENGTH} bytes (UTF-8: ${bytes})`);
  }
}

/** A text's size in UTF-8 bytes, counted toward the blob limit with the payloads it goes with. */
export function textBytes(...texts: (string | undefined)[]): number {
  let n = 0;
  for (const t of texts) for (let i = 0; t && i < t.length; i++) {
    const c = t.charCodeAt(i);
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : c >= 0xd800 && c < 0xdc00 ? (i++, 4) : 3;
  }
  return n;
}
