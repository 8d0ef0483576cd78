/**
 * How many tasks one PullReplicationTasks call carries. A pull asks for every shard of the
 * source at once: with a uniform page per shard, a catch-up pull of a 512-shard cluster
 * asked for 512,000 tasks (hundreds of MB on both sides, and more runs than one apply
 * transaction locks). Both sides keep a pull within PULL_BUDGET tasks: the receiver shares it
 * out among the shards it knows are behind (shardPageSizes), and the source scales down
 * whatever a receiver asks (withinBudget), so a receiver from before this is bounded too.
 */

/** Most tasks in one pull, across its shards. */
export const PULL_BUDGET = 8192;

/** Most tasks of one shard in one answer (the source's cap). */
export const MAX_SHARD_PAGE = 1000;

/**
 * Tasks to ask of each shard, by its backlog (the source's last max task id minus the
 * cursor; 0 or less when caught up as far as this side knows). A caught-up shard asks
 * pageSize, or less when there are so many shards that their pages would take over half the
 * budget; the shards behind share the rest, each up to catchUpPageSize (pageSize when its
 * backlog fits one page). Each asks at least 1.
 */
export function shardPageSizes(backlogs: readonly number[], pageSize: number, catchUpPageSize: number, budget = PULL_BUDGET): number[] {
  const idle = Math.max(1, Math.min(pageSize, Math.floor(budget / (2 * Math.max(backlogs.length, 1)))));
  const behind = backlogs.filter((b) => b > 0).length;
  const share = behind ? Math.floor((budget - idle * (backlogs.length - behind)) / behind) : 0;
  return backlogs.map((b) => (b > 0 ? Math.max(1, Math.min(share, b > pageSize ? catchUpPageSize : pageSize)) : idle));
}

/** sizes (0: dflt), each at most MAX_SHARD_PAGE, scaled down alike when they add up to more than budget; each at least 1. */
export function withinBudget(sizes: readonly number[], dflt: number, budget = PULL_BUDGET): number[] {
  const asked = sizes.map((s) => Math.min(s > 0 ? s : dflt > 0 ? dflt : 100, MAX_SHARD_PAGE));
  const total = asked.reduce((a, b) => a + b, 0);
  return total <= budget ? asked : asked.map((s) => Math.max(1, Math.floor((s * budget) / total)));
}

/**
 * Most event bytes (their attributes as the source stores them, JSON) one answer carries past
 * each shard's first task, shared among the shards read for it. Pages are counted in tasks
 * above, and a task's events may each hold a payload up to limits.blobSizeLimitError: a
 * catch-up of 200 signals of 1 MB in two shards was one 200 MB answer, which the source took
 * minutes and 1.8 GB to build and the passive cluster over 8 GB to take, and never finished.
 */
export const ANSWER_BYTES = 4 << 20;

/** The least share of ANSWER_BYTES a shard's page gets, however many shards are read. */
export const MIN_SHARD_PAGE_BYTES = 256 << 10;

/** Event bytes one shard's page may carry past its first task, when `shards` shards are read for one answer. */
export function shardPageBytes(shards: number): number {
  return Math.max(MIN_SHARD_PAGE_BYTES, Math.floor(ANSWER_BYTES / Math.max(shards, 1)));
}

/**
 * The most tasks a stream's first page of a backlog of a shard carries (less when the peer asked
 * less): each later page of the shard may be twice the one before while the shard is behind, up
 * to what the peer asked, and a page that catches the shard up starts it over (nextStreamPage).
 * A stream opened on a backlog (a peer back after a pause) sent 1,000 tasks of each shard at
 * once: 4,000 for four shards, read, encoded, decoded and applied (on cold statements) before
 * anything else moved, about 2.5 s before the peer's first apply; so did a stream that had
 * grown its pages once, at each backlog after (a burst, the peer's apply stalled). A receiver
 * pulling a source without the stream sizes its pulls the same way (receiver.ts).
 */
export const FIRST_STREAM_PAGE = 64;

/**
 * A stream's next page size of a shard after a page of `size`: doubled, up to `asked`, while the
 * page left the shard behind; FIRST_STREAM_PAGE (at most `asked`) once it caught up, which
 * costs nothing there: a caught-up shard's page holds only what committed since, far fewer.
 */
export function nextStreamPage(size: number, asked: number, behind: boolean): number {
  return Math.min(asked, behind ? size * 2 : FIRST_STREAM_PAGE);
}
