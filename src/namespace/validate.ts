import { invalidArgument } from "../errors";
import { shown } from "../shown";

const NAME = /^[A-Za-z0-9._-]{1,255}$/;

/** Namespace names: 1-255 chars of [A-Za-z0-9._-]. */
export function checkNamespaceName(name: string): void {
  if (!name) throw invalidArgument("namespace is required");
  if (!NAME.test(name)) {
    throw invalidArgument(`namespace name ${shown(name, { quote: true })} must be 1-255 characters of [A-Za-z0-9._-]`);
  }
}

/** Retention: a positive span of whole seconds, at most 10 years. */
export function checkRetentionSeconds(seconds: number): void {
  if (!Number.isFinite(seconds) || seconds <= 0) throw invalidArgument("retention must be a positive duration");
  if (!Number.isInteger(seconds)) throw invalidArgument(`retention must be a whole number of seconds, not ${seconds}s`);
  if (seconds > 10 * 365 * 24 * 3600) throw invalidArgument("retention must be at most 10 years");
}

const EMAIL = /^[^\s@]+@[^\s@]+$/;

/** Owner email, when given, must look like one. */
export function checkOwnerEmail(email: string): void {
  if (email && !EMAIL.test(email)) throw invalidArgument(`owner email ${shown(email, { quote: true })} is not an email address`);
}

/** The longest id or name a request may give (Temporal's limit.maxIDLength): workflow ids, types, task queues, request ids and the like. */
export const MAX_ID_LENGTH = 1000;

/**
 * Size limits of a namespace's description and data: Temporal's namespace handler caps
 * neither, but every namespace task carries the whole record to each cluster and every
 * cache holds it. Description and values take maxIDLength (1,000, as ids and names in
 * the engine), keys a namespace name's 255.
 */
export const NAMESPACE_LIMITS = { description: MAX_ID_LENGTH, dataEntries: 64, dataKey: 255, dataValue: MAX_ID_LENGTH } as const;

/** Description: at most 1,000 characters. */
export function checkDescription(description: string): void {
  const max = NAMESPACE_LIMITS.description;
  if (description.length > max) throw invalidArgument(`description is longer than ${max} characters (${description.length})`);
}

/** Data entries set by a request: keys at most 255 characters, values at most 1,000. */
export function checkDataEntries(entries: [string, string][]): void {
  const { dataKey, dataValue } = NAMESPACE_LIMITS;
  for (const [key, value] of entries) {
    const quoted = shown(key, { quote: true, max: 40 });
    if (key.length > dataKey) throw invalidArgument(`data key ${quoted} is longer than ${dataKey} characters`);
    if (value.length > dataValue) throw invalidArgument(`data value of key ${quoted} is longer than ${dataValue} characters (${value.length})`);
  }
}

/**
 * Data holds at most 64 entries. A namespace over it (replicated from a source without
 * the limit) may keep its entries and shed some; only growing it is refused.
 */
export function checkDataCount(count: number, before = 0): void {
  const max = NAMESPACE_LIMITS.dataEntries;
  if (count > max && count > before) throw invalidArgument(`data would hold ${count} entries; at most ${max}`);
}
