import { create } from "@bufbuild/protobuf";
import { type Timestamp, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { UsageError } from "./errors";

// RFC 3339 (a space for the T allowed): a date, or a date and time with an optional zone.
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?([Zz]|[+-]\d{2}:?\d{2})?)?$/;

/**
 * Parses an RFC 3339 time flag: `2024-05-01`, `2024-05-01T12:00:00Z`, `2024-05-01 12:00+02:00`;
 * without a zone it is UTC, as the CLI prints times. Date.parse, which this replaces, took a
 * zone-less time as the machine's local time (a date alone as UTC), `1` as 2001-01-01 and
 * `2024-02-30` as March 1. As RFC 3339 allows, a fraction may have any number of digits (those past
 * nanoseconds, which a Timestamp holds, are dropped, as Go's time.Parse does) and a second may be 60,
 * a leap second, only where one can fall: 23:59:60 UTC (the zone applied) on a month's last day. A
 * Timestamp has no room for one, so it is read as the minute's last nanosecond (:59.999999999).
 */
export function parseTime(text: string, flag: string): Timestamp {
  const bad = (why: string) =>
    new UsageError(`--${flag} must be an RFC 3339 time (e.g. 2024-05-01T12:00:00Z, 2024-05-01; UTC unless a zone is given), got "${text}"${why}`);
  const m = ISO_TIME.exec(text);
  if (!m) throw bad("");
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4], m[5], m[6]].map((p) => Number(p ?? 0)) as [number, number, number, number, number, number];
  const daysInMonth = new Date(utcMillis(year, month + 1, 0, 0, 0, 0)).getUTCDate();
  if (month < 1 || month > 12) throw bad(`: there is no month ${m[2]}`);
  if (day < 1 || day > daysInMonth) throw bad(`: ${m[1]}-${m[2]} has no day ${m[3]}`);
  if (hour > 23 || minute > 59) throw bad(": past 23:59:59");
  if (second > 60) throw bad(`: there is no second ${m[6]} (60 is a leap second's)`);
  const leap = second === 60;
  const offsetMinutes = zoneMinutes(m[8]);
  if (offsetMinutes === undefined) throw bad(": the zone is past ±23:59");
  const utc = utcMillis(year, month, day, hour, minute, leap ? 59 : second) - offsetMinutes * 60_000;
  // Before, :60 was taken at any minute, 12:00:60 read as 12:00:59.999999999.
  if (leap && !endsUtcMonth(utc + 1000)) throw bad(": second 60 is a leap second's, which falls only at 23:59:60 UTC on a month's last day");
  const seconds = BigInt(utc / 1000);
  return create(TimestampSchema, { seconds, nanos: leap ? 999_999_999 : Number((m[7] ?? "").slice(0, 9).padEnd(9, "0")) });
}

/** Date.UTC for a 1-based month, but of the year given: Date.UTC takes years 0 to 99 for 1900 to 1999. */
function utcMillis(year: number, month: number, day: number, hour: number, minute: number, second: number): number {
  const date = new Date(Date.UTC(2000, 0, 1, hour, minute, second));
  date.setUTCFullYear(year, month - 1, day);
  return date.getTime();
}

/** Whether the UTC time at ms is midnight beginning a month: the one a leap second can come before. */
function endsUtcMonth(ms: number): boolean {
  const next = new Date(ms);
  return next.getUTCDate() === 1 && next.getUTCHours() === 0 && next.getUTCMinutes() === 0 && next.getUTCSeconds() === 0;
}

/** Minutes east of UTC of `Z`, `+02:00`, `-0530` (0 when absent); undefined past ±23:59. */
function zoneMinutes(zone: string | undefined): number | undefined {
  if (zone === undefined || zone.toUpperCase() === "Z") return 0;
  const digits = zone.slice(1).replace(":", "");
  const hours = Number(digits.slice(0, 2));
  const minutes = Number(digits.slice(2));
  if (hours > 23 || minutes > 59) return undefined;
  return (zone[0] === "-" ? -1 : 1) * (hours * 60 + minutes);
}
