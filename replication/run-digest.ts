import { z } from "zod";
import { sql, type SQL } from "drizzle-orm";
import type { Db } from "../src/persistence/database";
import { unavailable } from "../src/errors";
import { rowsOf } from "../src/persistence/raw-statements";
import { versionHistoryOf } from "../src/history/branch-store";
import { historyEvents as h, type VersionHistoryItem } from "../src/persistence/schema";
import { createMd5 } from "./md5";
import { firstDivergence, lastEventIdOf, versionHistoryUpTo } from "./version-history";

/**
 * One event's part of a run's checksum. jsonb renders canonically (sorted keys, fixed
 * spacing), so equal attributes give equal text on both clusters.
 */
const eventText = sql`${h.eventId}::text || ':' || ${h.version}::text || ':' || ${h.eventType} || ':' || ${h.attributes}::text`;

/** A run's checksum: the MD5 of its events' texts, in event id order, joined by '|'. */
export const digestOf = sql<string>`md5(coalesce(string_agg(${eventText}, '|' order by ${h.eventId}), ''))`;

/**
 * How many times its stored size an event's attributes can render to, by how they are stored.
 * Uncompressed jsonb holds a string's bytes unescaped, and a control character renders as
 * \u00XX: six bytes for one (everything else renders to less, the 4-byte entry of each
 * value and key included; tern stores protobuf JSON, whose numbers are 32-bit integers). A
 * compressed value holds at most 87.4 times less with pglz (2,184 bytes in 25: eight matches
 * of 273 bytes, 3-byte tags and their control byte) and 255 times less with lz4.
 */
const RENDER_FACTOR = 6;
const PGLZ_FACTOR = 88;
const LZ4_FACTOR = 256;

/**
 * At least the bytes of the events' attributes as eventText renders them, for checksumRows'
 * choice, from their stored sizes: neither detoasted nor rendered, where rendering each event
 * here and again in digestOf made the checksums of 45,000 small runs take 8.8 s, not 7.6. An
 * event compressed otherwise (a later PostgreSQL's method) is rendered and measured.
 */
export const renderedBytesBound = sql<number>`coalesce(sum(case
  when pg_column_compression(${h.attributes}) is null then ${sql.raw(String(RENDER_FACTOR))} * pg_column_size(${h.attributes})::bigint
  when pg_column_compression(${h.attributes}) = 'pglz' then ${sql.raw(String(RENDER_FACTOR * PGLZ_FACTOR))} * pg_column_size(${h.attributes})::bigint
  when pg_column_compression(${h.attributes}) = 'lz4' then ${sql.raw(String(RENDER_FACTOR * LZ4_FACTOR))} * pg_column_size(${h.attributes})::bigint
  else octet_length(${h.attributes}::text) end), 0)::bigint`;

/**
 * Runs whose attributes may render to more than this (renderedBytesBound) are digested a page
 * of events at a time (pagedDigest), not by digestOf: string_agg holds the whole text in one
 * value, and a PostgreSQL value ends at 1 GB (a run of 420 signals of 2 MB failed the whole
 * namespace's verify, `54000: out of memory`).
 */
export const SQL_DIGEST_BYTES = 256 << 20;

/** About how many bytes of event text one page of pagedDigest reads. */
const PAGE_BYTES = 8 << 20;

/**
 * How far a pagedDigest got: the last event id digested, the digest so far (a tail of 63 bytes
 * at most) and the run's version history up to it (absent from a server of an older build).
 */
export const PagedDigestProgress = z.object({
  after: z.number().int().positive(),
  md5: z.object({ words: z.tuple([z.number().int(), z.number().int(), z.number().int(), z.number().int()]), tail: z.string().max(84).regex(/^[A-Za-z0-9+/]*={0,2}$/), length: z.number().int().nonnegative() }),
  vh: z.array(z.object({ eventId: z.number().int().positive(), version: z.number().int().nonnegative() })).max(10_000).optional(),
});
export type PagedDigestProgress = z.infer<typeof PagedDigestProgress>;

/** How many times one call starts a run's digest over because the run was rewritten meanwhile. */
const REWRITES = 3;

/**
 * digestOf of one run's events up to event id upTo (all without it), computed here from
 * pages of events read in order: the same MD5 over the same text, so it matches a peer's
 * digestOf, in memory bounded by a page. Taken up from `from` if given; past `until` (a
 * Date.now() time), after at least one page, it stops and says how far it got instead.
 * The pages are statements of their own, calls apart: a conflict settled meanwhile rewrites
 * the run from its fork on, and a digest of the old branch's start and the new one's end
 * matches neither cluster (the run showed diverging). So the run's version history when the
 * digest began (kept in the progress) is compared with the one when it answers: where they
 * part within the events digested, the digest starts over.
 */
export async function pagedDigest(
  db: Db,
  run: { namespaceId: string; workflowId: string; runId: string },
  { upTo, from, until = Infinity }: { upTo?: number; from?: PagedDigestProgress; until?: number } = {},
): Promise<{ checksum: string } | { progress: PagedDigestProgress }> {
  for (let rewrites = 0; ; rewrites++) {
    // A token of an older build says nothing of the history its digest began with: it is not checked.
    const began = from ? from.vh : await versionHistoryOf(db, run);
    const result = await digestPages(db, run, { upTo, from, until });
    const now = await versionHistoryOf(db, run);
    const after = "progress" in result ? result.progress.after : (upTo ?? Infinity);
    if (!began || !now || !rewritten(began, now, after)) {
      return "progress" in result && now ? { progress: { ...result.progress, vh: versionHistoryUpTo(now, result.progress.after) } } : result;
    }
    if (rewrites === REWRITES) throw unavailable(`the history of run ${run.workflowId}/${run.runId} was rewritten ${REWRITES + 1} times while it was digested (a conflict being settled): verify again`);
    from = undefined;
  }
}

/** Whether the run's events up to `after` may differ between two of its version histories (appends do not count). */
function rewritten(before: VersionHistoryItem[], now: VersionHistoryItem[], after: number): boolean {
  const fork = firstDivergence(before, now);
  if (fork !== undefined) return fork <= after;
  // Cut shorter within the events digested.
  return lastEventIdOf(now) < Math.min(lastEventIdOf(before), after);
}

/** pagedDigest's pages. */
async function digestPages(
  db: Db,
  run: { namespaceId: string; workflowId: string; runId: string },
  { upTo, from, until }: { upTo: number | undefined; from: PagedDigestProgress | undefined; until: number },
): Promise<{ checksum: string } | { progress: PagedDigestProgress }> {
  const md5 = createMd5(from?.md5);
  let after = from?.after ?? 0;
  let limit = 8;
  for (;;) {
    const rows = rowsOf(
      await db.execute(sql`select ${h.eventId}::int as id, ${eventText} as text from ${h}
        where ${h.namespaceId} = ${run.namespaceId} and ${h.workflowId} = ${run.workflowId} and ${h.runId} = ${run.runId}
          and ${h.eventId} > ${after} ${upTo === undefined ? sql`` : sql`and ${h.eventId} <= ${upTo}`}
        order by ${h.eventId} limit ${limit}`),
    ) as { id: number; text: string }[];
    let bytes = 0;
    for (const r of rows) {
      if (after > 0) md5.update("|");
      md5.update(r.text);
      after = Number(r.id);
      bytes += r.text.length;
    }
    if (rows.length < limit) return { checksum: md5.hex() };
    if (Date.now() >= until) return { progress: { after, md5: md5.state() } };
    // The next page sized by this one's events, so pages of large and of small events both hold about PAGE_BYTES.
    limit = Math.min(Math.max(Math.floor((PAGE_BYTES * rows.length) / Math.max(bytes, 1)), 1), 1000);
  }
}


/**
 * A scalar subquery for the checksum of the run `key` names (in an outer query), over its
 * events up to `upTo` if given; null when `bytes` (its renderedBytesBound) is past limit.
 */
export function digestUnless(bytes: SQL, limit: number, key: { namespaceId: SQL | string; workflowId: SQL; runId: SQL }, upTo?: SQL): SQL<string | null> {
  const within = upTo ? sql`and ${h.eventId} <= ${upTo}` : sql``;
  return sql<string | null>`case when ${bytes} <= ${limit} then (select ${digestOf} from ${h} where ${h.namespaceId} = ${key.namespaceId} and ${h.workflowId} = ${key.workflowId} and ${h.runId} = ${key.runId} ${within}) end`;
}
