import { invalidArgument } from "../errors";

const NAME = /^[A-Za-z0-9._-]{1,255}$/;

/** Namespace names: 1-255 chars of [A-Za-z0-9._-]. */
export function checkNamespaceName(name: string): void {
  if (!name) throw invalidArgument("namespace is required");
  if (!NAME.test(name)) {
    throw invalidArgument(`namespace name ${JSON.stringify(name.slice(0, 300))} must be 1-255 characters of [A-Za-z0-9._-]`);
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
  if (email && !EMAIL.test(email)) throw invalidArgument(`owner email ${JSON.stringify(email)} is not an email address`);
}
