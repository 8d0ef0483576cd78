import { ScalarType, type DescField, type DescMessage } from "@bufbuild/protobuf";
import { invalidArgument } from "../errors";
import { shown } from "../shown";

/**
 * Refuses a request with a NUL (U+0000) in any of its strings (a field, a list's item, a map's
 * key or value, at any depth), naming the field. PostgreSQL stores no NUL in a text (22021) nor
 * a \u0000 in a jsonb (22P05): every such value was refused by the database, as "a value in the
 * request cannot be stored", naming no field; a lookup's (DescribeCluster, ListWorkflowExecutions)
 * the same, and an AddOrUpdateRemoteCluster address with one was UNAVAILABLE ("cannot reach"),
 * which a client retries for good.
 */
export function refuseNulText(desc: DescMessage, message: unknown): void {
  const at = nulIn(desc, message);
  if (at) throw invalidArgument(`${at} contains a NUL character (U+0000), which tern cannot store`);
}

/**
 * The path of the first string holding a NUL in message (of type desc), or undefined. Each level
 * adds its part on the way back, so a request without one (nearly all) allocates no path.
 */
function nulIn(desc: DescMessage, message: unknown): string | undefined {
  if (typeof message !== "object" || message === null) return undefined;
  const fields = message as Record<string, unknown>;
  for (const field of desc.fields) {
    const held = field.oneof ? (fields[field.oneof.localName] as { case?: string; value?: unknown } | undefined) : undefined;
    if (field.oneof && held?.case !== field.localName) continue;
    const at = nulInValue(field, field.oneof ? held?.value : fields[field.localName]);
    if (at !== undefined) return `${field.name}${at}`;
  }
  return undefined;
}

/** Where in a field's value the first NUL is ("" the value itself), or undefined. */
function nulInValue(field: DescField, value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  switch (field.fieldKind) {
    case "scalar":
      return nulInItem(field.scalar, undefined, value);
    case "message":
      return nulInItem(undefined, field.message, value);
    case "list": {
      const items = value as unknown[];
      for (let i = 0; i < items.length; i++) {
        const at = nulInItem(field.scalar, field.message, items[i]);
        if (at !== undefined) return `[${i}]${at}`;
      }
      return undefined;
    }
    case "map":
      for (const key in value as Record<string, unknown>) {
        if (hasNul(key)) return ` key ${shown(key, { quote: true })}`;
        const at = nulInItem(field.scalar, field.message, (value as Record<string, unknown>)[key]);
        if (at !== undefined) return `[${shown(key, { quote: true })}]${at}`;
      }
      return undefined;
    default:
      return undefined;
  }
}

/** A string (of a string field, or a wrapper message held unboxed as one) holding a NUL (""), or where a message's first is. */
function nulInItem(scalar: ScalarType | undefined, message: DescMessage | undefined, item: unknown): string | undefined {
  if (typeof item === "string") return (scalar === ScalarType.STRING || message) && hasNul(item) ? "" : undefined;
  if (!message) return undefined;
  const at = nulIn(message, item);
  return at === undefined ? undefined : `.${at}`;
}

const hasNul = (value: unknown): boolean => typeof value === "string" && value.includes("\u0000");
