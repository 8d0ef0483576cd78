/** Farthest a command name may be from a mistyped word to be suggested: cobra's default (the temporal CLI's). */
const MAX_DISTANCE = 2;

/**
 * Edit distance between a and b: insertions, deletions, substitutions and transpositions of two
 * neighbouring letters (optimal string alignment), each 1, as git counts a swap: `strat` is 1
 * from `start`.
 */
export function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = d;
    }
  }
  return rows[a.length]![b.length]!;
}

/**
 * The names a mistyped word may have meant, nearest first (ties in their given order): those
 * within MAX_DISTANCE of it, or that it begins (`desc` for describe), in any case, as cobra
 * suggests for the temporal CLI and git for its commands.
 */
export function suggestNames(typed: string, names: readonly string[]): string[] {
  const word = typed.toLowerCase();
  if (word === "") return [];
  return names
    .map((name, order) => {
      const lower = name.toLowerCase();
      return { name, order, distance: lower.startsWith(word) ? 0 : editDistance(word, lower) };
    })
    .filter((c) => c.distance <= MAX_DISTANCE)
    .sort((x, y) => x.distance - y.distance || x.order - y.order)
    .map((c) => c.name);
}
