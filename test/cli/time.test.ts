import { describe, expect, test } from "bun:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { UsageError } from "../../src/cli/errors";
import { parseTime } from "../../src/cli/time";

describe("parseTime (workflow list --start-after / --start-before)", () => {
  test.each([
    ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.000Z"],
    ["2024-05-01", "2024-05-01T00:00:00.000Z"],
    // A zone-less time is UTC, as the CLI prints times, whatever the machine's zone (Date.parse took it as local time).
    ["2024-05-01T12:00", "2024-05-01T12:00:00.000Z"],
    ["2024-05-01 12:00:30", "2024-05-01T12:00:30.000Z"],
    ["2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00.000Z"],
    ["2024-05-01T12:00:00-0530", "2024-05-01T17:30:00.000Z"],
    ["2024-02-29T23:59:59.250z", "2024-02-29T23:59:59.250Z"],
    // Years 0 to 99 are those years (Date.UTC took them for 1900 to 1999), and year 0 is a leap year.
    ["0050-01-01", "0050-01-01T00:00:00.000Z"],
    ["0000-02-29", "0000-02-29T00:00:00.000Z"],
  ])("%s is %s", (text, iso) => {
    expect(timestampDate(parseTime(text, "start-after")).toISOString()).toBe(iso);
  });

  test("fractions keep their nanoseconds", () => {
    expect(parseTime("2024-05-01T00:00:00.123456789Z", "start-after").nanos).toBe(123_456_789);
  });

  test("RFC 3339 allows a fraction of any length (past nanoseconds it is cut, as Go's time.Parse does) and a leap second, read as the minute's last nanosecond", () => {
    // Both were refused with the generic message, which the text's form matched.
    expect(parseTime("2024-05-01T00:00:00.1234567891234Z", "start-after")).toMatchObject({ seconds: 1714521600n, nanos: 123_456_789 });
    expect(parseTime("2016-12-31T23:59:60Z", "start-after")).toMatchObject({ seconds: 1483228799n, nanos: 999_999_999 });
    expect(parseTime("2016-12-31T15:59:60.5-08:00", "start-after")).toMatchObject({ seconds: 1483228799n, nanos: 999_999_999 });
    // A zone past midnight: 00:59:60+01:00 on the 1st is 23:59:60 UTC on the last day before it.
    expect(parseTime("2017-01-01T00:59:60+01:00", "start-after")).toMatchObject({ seconds: 1483228799n, nanos: 999_999_999 });
    expect(parseTime("2015-06-30T23:59:60Z", "start-after")).toMatchObject({ seconds: 1435708799n, nanos: 999_999_999 });
  });

  test.each([
    // Before: each was read as the minute's last nanosecond.
    "2024-05-01T12:00:60Z",
    "2024-05-15T23:59:60Z",
    "2016-12-31T23:59:60+01:00",
    "2016-12-31T23:59:60-00:30",
    "2016-12-31T23:58:60Z",
  ])("a leap second where none can fall, %s, is refused", (text) => {
    expect(() => parseTime(text, "start-after")).toThrow(
      new UsageError(`--start-after must be an RFC 3339 time (e.g. 2024-05-01T12:00:00Z, 2024-05-01; UTC unless a zone is given), got "${text}": second 60 is a leap second's, which falls only at 23:59:60 UTC on a month's last day`),
    );
  });

  test.each([
    // Date.parse: 2001-01-01, 2000-01-01, March 1, local midnight of Dec 7.
    ["1", ""],
    ["0", ""],
    ["2023-02-29", ": 2023-02 has no day 29"],
    ["2024-13-01", ": there is no month 13"],
    ["Dec 7 2026", ""],
    ["2024-05-01T24:00:00Z", ": past 23:59:59"],
    ["2024-05-01T12:00:61Z", ": there is no second 61 (60 is a leap second's)"],
    ["2024-05-01T12:00:00+24:00", ": the zone is past ±23:59"],
    ["yesterday", ""],
  ])("%s is refused, naming the flag", (text, why) => {
    expect(() => parseTime(text, "start-before")).toThrow(
      new UsageError(`--start-before must be an RFC 3339 time (e.g. 2024-05-01T12:00:00Z, 2024-05-01; UTC unless a zone is given), got "${text}"${why}`),
    );
  });
});
