import { withoutRequestIds } from "./failure-log";
import type { Logger } from "./log";

/** Most distinct lines remembered; past it the oldest are forgotten (their next line is written). */
const MAX_KEYS = 1000;

/**
 * A logger that writes a line repeated within windowMs (the same level, message and fields,
 * request ids aside) once a window, the next one written saying how many it stood for
 * (`repeated`); the others go to debug. A database outage fails every request the same way: at 500 requests a second
 * that was a thousand lines a second, each the same but for its request id.
 */
export function createRepeatLog(log: Logger, opts: { windowMs?: number; now?: () => number } = {}): Logger {
  const windowMs = opts.windowMs ?? 10_000;
  const now = opts.now ?? (() => performance.now());
  const lines = new Map<string, { writtenAt: number; left: number }>();

  const gate = (write: (msg: string, fields?: Record<string, unknown>) => void, level: string) => (msg: string, fields?: Record<string, unknown>) => {
    const key = keyOf(level, msg, fields);
    const at = now();
    const seen = lines.get(key);
    if (seen && at - seen.writtenAt < windowMs) {
      seen.left++;
      // Still there, request id and all, for an operator who turns debug on.
      if (level !== "debug") log.debug(msg, { ...fields, repeatOf: level });
      return;
    }
    lines.delete(key); // re-inserted last: the map's order is the order lines were written
    lines.set(key, { writtenAt: at, left: 0 });
    if (lines.size > MAX_KEYS) lines.delete(lines.keys().next().value!);
    write(msg, seen?.left ? { ...fields, repeated: seen.left } : fields);
  };
  return {
    debug: gate((m, f) => log.debug(m, f), "debug"),
    info: gate((m, f) => log.info(m, f), "info"),
    warn: gate((m, f) => log.warn(m, f), "warn"),
    error: gate((m, f) => log.error(m, f), "error"),
    child: (fields) => createRepeatLog(log.child(fields), opts),
  };
}

/** A line's identity: its level, message and fields, without request ids (new on every request). */
function keyOf(level: string, msg: string, fields: Record<string, unknown> = {}): string {
  const { requestId: _, ...rest } = fields;
  return `${level}\u0000${msg}\u0000${withoutRequestIds(JSON.stringify(rest))}`;
}
