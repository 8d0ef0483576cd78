import { create } from "@bufbuild/protobuf";
import { type Payload, PayloadSchema, type Payloads, PayloadsSchema } from "../gen/tern/common/v1/common_pb";
import { toBase64 } from "../history/events";
import { UsageError } from "./errors";
import { jsonErrorPosition } from "./json-position";

/** The encoding the CLI writes and knows how to show as text. */
export const JSON_ENCODING = "json/plain";

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/** Encodes JSON text as one json/plain Payload; throws UsageError naming the flag if it is not JSON. */
export function encodeJsonPayload(text: string, flag = "input"): Payload {
  try {
    JSON.parse(text);
  } catch (e) {
    const at = jsonErrorPosition(text);
    const where = at ? ` at line ${at.line}, column ${at.column}` : "";
    throw new UsageError(`--${flag} is not valid JSON${where}: ${(e as Error).message}`);
  }
  return create(PayloadSchema, {
    metadata: { encoding: utf8Encoder.encode(JSON_ENCODING) },
    data: utf8Encoder.encode(text),
  });
}

/** Wraps a JSON flag value in Payloads, or returns undefined when the flag was not given. */
export function jsonPayloads(text: string | undefined, flag = "input"): Payloads | undefined {
  if (text === undefined) return undefined;
  return create(PayloadsSchema, { payloads: [encodeJsonPayload(text, flag)] });
}

/** The payload's metadata["encoding"] as text ("" when missing). */
export function payloadEncoding(p: Payload): string {
  const raw = p.metadata["encoding"];
  return raw ? new TextDecoder().decode(raw) : "";
}

/** Human text for a payload: json/plain as compact JSON, anything else as `<encoding> base64:...`. */
export function decodePayload(p: Payload): string {
  const encoding = payloadEncoding(p);
  if (encoding === JSON_ENCODING) {
    try {
      return JSON.stringify(JSON.parse(utf8Decoder.decode(p.data)));
    } catch {
      // Not valid JSON after all: fall through and show bytes.
    }
  }
  if (encoding === "binary/null") return "null";
  return `<${encoding || "no encoding"}> base64:${toBase64(p.data)}`;
}

/** Human text for Payloads: one value as is, several as a JSON-like list; "" when empty. */
export function decodePayloads(p: Payloads | undefined): string {
  if (!p || p.payloads.length === 0) return "";
  const parts = p.payloads.map(decodePayload);
  return parts.length === 1 ? parts[0]! : `[${parts.join(", ")}]`;
}
